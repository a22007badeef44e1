#include "mole_weights.h"

#include <torch/library.h>

#include <algorithm>
#include <array>
#include <map>
#include <mutex>

namespace lmops {
namespace {

struct Parts {
  at::Tensor a, wy, b1, gram;  // from lora_A and lora_B
  at::Tensor p, c, d;          // from lora_B, the gate and the norm affine
};

void expert_part(const at::Tensor& lora_A, const at::Tensor& lora_B, Parts& out) {
  const int64_t n = lora_A.size(0), r = lora_A.size(1), k = lora_A.size(2), o = lora_B.size(1);
  const at::Tensor b = lora_B.to(at::kFloat);
  const at::Tensor bt = b.transpose(1, 2);  // (N, r, O)
  out.a = lora_A.to(at::kFloat).reshape({n * r, k}).contiguous();  // a view of lora_A when it is float32
  out.wy = bt.reshape({n * r, o}).contiguous();
  out.b1 = b.sum(1).reshape({n * r}).contiguous();
  out.gram = at::bmm(bt, b).contiguous();
}

void gate_part(const at::Tensor& lora_B, const at::Tensor& gate_weight, const std::optional<at::Tensor>& norm_weight,
               const std::optional<at::Tensor>& norm_bias, Parts& out) {
  const int64_t n = lora_B.size(0), o = lora_B.size(1), r = lora_B.size(2);
  at::Tensor b = lora_B.to(at::kFloat);
  const at::Tensor gw = gate_weight.to(at::kFloat);
  if (norm_weight && norm_weight->defined()) {
    const at::Tensor w = norm_weight->to(at::kFloat);
    b = b * w.view({n, o, 1});
    out.c = at::mv(gw, w).contiguous();
  } else {
    out.c = gw.sum(1).contiguous();
  }
  // (N_i, r, O) @ (N_i, O, N_j) -> (N_i, r, N_j)
  out.p = at::bmm(b.transpose(1, 2), gw.view({n, n, o}).permute({1, 2, 0})).reshape({n * r, n}).contiguous();
  out.d = norm_bias && norm_bias->defined() ? at::mv(gw, norm_bias->to(at::kFloat)).contiguous()
                                            : at::zeros({n}, gw.options());
}

constexpr size_t kTensors = 5;  // lora_A, lora_B, gate_weight, norm_weight, norm_bias
constexpr size_t kMaxEntries = 4096;

struct Entry {
  std::array<std::optional<c10::weak_intrusive_ptr<c10::TensorImpl>>, kTensors> refs;
  std::array<int64_t, kTensors> versions{};
  Parts parts;
};

std::mutex g_mutex;
std::map<std::array<const void*, kTensors>, Entry> g_cache;

}  // namespace

MoleWeights mole_weights(const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& gate_weight,
                         const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias) {
  at::NoGradGuard no_grad;
  const std::array<const at::Tensor*, kTensors> tensors = {
      &lora_A, &lora_B, &gate_weight, norm_weight && norm_weight->defined() ? &*norm_weight : nullptr,
      norm_bias && norm_bias->defined() ? &*norm_bias : nullptr};
  bool cacheable = true;
  std::array<const void*, kTensors> key{};
  std::array<int64_t, kTensors> versions{};
  for (size_t i = 0; i < kTensors; ++i) {
    if (tensors[i] == nullptr) continue;
    if (tensors[i]->is_inference()) cacheable = false;  // no version counter
    key[i] = tensors[i]->unsafeGetTensorImpl();
    versions[i] = cacheable ? tensors[i]->_version() : 0;
  }
  Parts parts;
  if (!cacheable) {
    expert_part(lora_A, lora_B, parts);
    gate_part(lora_B, gate_weight, norm_weight, norm_bias, parts);
    return {parts.a, parts.wy, parts.b1, parts.gram, parts.p, parts.c, parts.d};
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_cache.find(key);
  bool alive = it != g_cache.end();
  if (alive) {
    for (size_t i = 0; i < kTensors && alive; ++i) {
      // the same TensorImpl still alive (an address reused by a new tensor fails the lock() comparison)
      const auto& ref = it->second.refs[i];
      alive = tensors[i] == nullptr ? !ref.has_value() : ref.has_value() && ref->lock().get() == key[i];
    }
  }
  if (alive && it->second.versions == versions) {
    const Parts& p = it->second.parts;
    return {p.a, p.wy, p.b1, p.gram, p.p, p.c, p.d};
  }
  if (alive && it->second.versions[0] == versions[0] && it->second.versions[1] == versions[1]) {
    parts = it->second.parts;  // the experts are unchanged: only the gate part is recomputed
  } else {
    expert_part(lora_A, lora_B, parts);
  }
  gate_part(lora_B, gate_weight, norm_weight, norm_bias, parts);
  if (g_cache.size() >= kMaxEntries) {  // drop entries whose tensors died, else everything
    for (auto e = g_cache.begin(); e != g_cache.end();) {
      const bool dead = std::any_of(e->second.refs.begin(), e->second.refs.end(),
                                    [](const auto& r) { return r.has_value() && r->expired(); });
      e = dead ? g_cache.erase(e) : std::next(e);
    }
    if (g_cache.size() >= kMaxEntries) g_cache.clear();
  }
  Entry entry;
  for (size_t i = 0; i < kTensors; ++i) {
    if (tensors[i] != nullptr) entry.refs[i] = c10::weak_intrusive_ptr<c10::TensorImpl>(tensors[i]->getIntrusivePtr());
  }
  entry.versions = versions;
  entry.parts = parts;
  g_cache[key] = std::move(entry);
  return {parts.a, parts.wy, parts.b1, parts.gram, parts.p, parts.c, parts.d};
}

void clear_mole_weights_cache() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_cache.clear();
}

}  // namespace lmops

namespace {

// The op leaves out ``a`` (lora_A stacked as float32), a view of lora_A for float32 experts: an op's
// outputs may not alias its inputs, and callers get it from lora_A at no cost.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mole_gate_weights_op(
    const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& gate_weight,
    const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias) {
  const lmops::MoleWeights w = lmops::mole_weights(lora_A, lora_B, gate_weight, norm_weight, norm_bias);
  return {w.wy, w.b1, w.gram, w.p, w.c, w.d};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmops, CompositeExplicitAutograd, m) { m.impl("mole_gate_weights", &mole_gate_weights_op); }
