// Autograd of lmops::ternary_linear and lmops::mole_gate, registered at the Autograd key so that a call
// that needs no gradient costs one C++ redispatch (no Python), and one that does records a node whose
// backward is an op of its own, in plain torch (decomposed under torch.compile):
//
// - ternary_linear: lmops::ternary_linear_backward (lmops_kernels/ternary.py). Straight-through estimator
//   through the activation quantizer Q: y = Q(x) (q gamma)^T + b, so dy/dx := (q gamma) and
//   grad_x = grad_y @ (q gamma); grad_bias = grad_y summed over tokens.
// - mole_gate: lmops::mole_gate_backward (lmops_kernels/mole.py; the rank-space gradient of
//   lmops_kernels/mole_rank.py) for x, the gate, the norm affine and the temperature. The LoRA experts are
//   frozen in MoLE: a gradient asked for lora_A, lora_B or scaling is an error.
#include <torch/autograd.h>
#include <torch/library.h>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor ternary_linear_below_autograd(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                                         const std::optional<at::Tensor>& bias, c10::string_view layout) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lmops::ternary_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, packed, weight_scale, bias, layout);
}

class TernaryLinear : public torch::autograd::Function<TernaryLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& packed,
                            const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                            c10::string_view layout) {
    ctx->save_for_backward({packed, weight_scale});
    ctx->saved_data["in_features"] = x.sym_size(-1);
    ctx->saved_data["layout"] = std::string(layout);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return ternary_linear_below_autograd(x, packed, weight_scale, bias, layout);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto backward_op = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("lmops::ternary_linear_backward", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    c10::SymInt, c10::string_view)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_y = grads[0];
    at::Tensor grad_x, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_x = backward_op.call(grad_y, saved[0], saved[1], ctx->saved_data["in_features"].toSymInt(),
                                ctx->saved_data["layout"].toStringRef());
    }
    // edges exist for defined tensor inputs only: bias is input 3 when it was given
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)) grad_bias = grad_y.reshape_symint({-1, grad_y.sym_size(-1)}).sum(0);
    return {grad_x, at::Tensor(), at::Tensor(), grad_bias, at::Tensor()};
  }
};

at::Tensor ternary_linear_autograd(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& weight_scale,
                                   const std::optional<at::Tensor>& bias, c10::string_view layout) {
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (x.requires_grad() || (bias.has_value() && bias->defined() && bias->requires_grad()));
  if (!needs_grad) return ternary_linear_below_autograd(x, packed, weight_scale, bias, layout);
  return TernaryLinear::apply(x, packed, weight_scale, bias, layout);
}

using OptTensor = std::optional<at::Tensor>;
using MoleOut = std::tuple<at::Tensor, at::Tensor>;

MoleOut mole_gate_below_autograd(const at::Tensor& x, const at::Tensor& lora_A, const at::Tensor& lora_B,
                                 const at::Tensor& scaling, const at::Tensor& gate_weight, const OptTensor& norm_weight,
                                 const OptTensor& norm_bias, const at::Tensor& temperature,
                                 const OptTensor& expert_mask, c10::string_view norm, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lmops::mole_gate", "")
                       .typed<MoleOut(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&,
                                      const OptTensor&, c10::string_view, double)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature, expert_mask, norm, eps);
}

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

class MoleGate : public torch::autograd::Function<MoleGate> {
 public:
  // Inputs in order; the autograd edges exist for the defined tensors only, so an input's edge index
  // counts the defined tensors before it.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& lora_A,
                               const at::Tensor& lora_B, const at::Tensor& scaling, const at::Tensor& gate_weight,
                               const OptTensor& norm_weight, const OptTensor& norm_bias, const at::Tensor& temperature,
                               const OptTensor& expert_mask, c10::string_view norm, double eps) {
    auto [y, gates] = mole_gate_below_autograd(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias,
                                               temperature, expert_mask, norm, eps);
    const at::Tensor none;
    ctx->save_for_backward({x, lora_A, lora_B, scaling, gate_weight, defined(norm_weight) ? *norm_weight : none,
                            defined(norm_bias) ? *norm_bias : none, temperature,
                            defined(expert_mask) ? *expert_mask : none, gates});
    ctx->saved_data["norm"] = std::string(norm);
    ctx->saved_data["eps"] = eps;
    return {y, gates};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto backward_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("lmops::mole_gate_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                const at::Tensor&, const OptTensor&, c10::string_view, double, std::array<bool, 5>)>();
    const auto s = ctx->get_saved_variables();
    // edge index of each input: 0 x, 1 lora_A, 2 lora_B, 3 scaling, 4 gate_weight, then the optional ones
    int64_t edge = 5;
    const int64_t e_nw = s[5].defined() ? edge++ : -1;
    const int64_t e_nb = s[6].defined() ? edge++ : -1;
    const int64_t e_tau = edge++;
    const char* frozen[] = {"lora_A", "lora_B", "scaling"};
    for (int64_t i = 1; i <= 3; ++i) {
      TORCH_CHECK_VALUE(!ctx->needs_input_grad(i), "mole_gate: ", frozen[i - 1],
                        " requires grad, but the LoRA experts are frozen in MoLE and mole_gate has no gradient for "
                        "them; call ",
                        frozen[i - 1], ".requires_grad_(False) (or pass ", frozen[i - 1], ".detach())");
    }
    const std::array<bool, 5> needs = {ctx->needs_input_grad(0), ctx->needs_input_grad(4),
                                       e_nw >= 0 && ctx->needs_input_grad(e_nw),
                                       e_nb >= 0 && ctx->needs_input_grad(e_nb), ctx->needs_input_grad(e_tau)};
    auto opt = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
    auto [gx, gw, gnw, gnb, gtau] = backward_op.call(
        opt(grads[0]), opt(grads[1]), s[9], s[0], s[1], s[2], s[3], s[4], opt(s[5]), opt(s[6]), s[7], opt(s[8]),
        ctx->saved_data["norm"].toStringRef(), ctx->saved_data["eps"].toDouble(), needs);
    const at::Tensor none;
    // one gradient per forward input (non-tensor and undefined inputs get none)
    return {needs[0] ? gx : none, none, none, none, needs[1] ? gw : none, needs[2] ? gnw : none,
            needs[3] ? gnb : none, needs[4] ? gtau : none, none, none, none};
  }
};

MoleOut mole_gate_autograd(const at::Tensor& x, const at::Tensor& lora_A, const at::Tensor& lora_B,
                           const at::Tensor& scaling, const at::Tensor& gate_weight, const OptTensor& norm_weight,
                           const OptTensor& norm_bias, const at::Tensor& temperature, const OptTensor& expert_mask,
                           c10::string_view norm, double eps) {
  const bool needs_grad =
      at::GradMode::is_enabled() &&
      (x.requires_grad() || lora_A.requires_grad() || lora_B.requires_grad() || scaling.requires_grad() ||
       gate_weight.requires_grad() || (defined(norm_weight) && norm_weight->requires_grad()) ||
       (defined(norm_bias) && norm_bias->requires_grad()) || temperature.requires_grad());
  if (!needs_grad) {
    return mole_gate_below_autograd(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
                                    expert_mask, norm, eps);
  }
  auto out = MoleGate::apply(x, lora_A, lora_B, scaling, gate_weight, norm_weight, norm_bias, temperature,
                             expert_mask, norm, eps);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmops, Autograd, m) {
  m.impl("ternary_linear", &ternary_linear_autograd);
  m.impl("mole_gate", &mole_gate_autograd);
}
