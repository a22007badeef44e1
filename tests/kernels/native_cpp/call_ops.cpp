// Calls lmops ops from C++ with no Python in the process: dlopen the native library (argv[1]), then
// call lmops::ternary_linear, lmops::ternary_matmul_int and lmops::quantize_activation_absmax through the
// dispatcher on inputs read from raw files, and write the outputs as raw files for the test to compare
// with the plain-torch reference. Used by tests/kernels/test_native_cpp.py.
//
//   call_ops LIB DIR M K N    (DIR holds x.f32 (M, K), packed.u8 (N, 4 ceil(K/16)), scale.f32 (1,))
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

at::Tensor read(const std::string& path, at::IntArrayRef shape, at::ScalarType dtype) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  TORCH_CHECK(static_cast<size_t>(t.nbytes()) == bytes.size(), path, ": expected ", t.nbytes(), " bytes, got ",
              bytes.size());
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

void write(const std::string& path, const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(c.const_data_ptr()), static_cast<std::streamsize>(c.nbytes()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: call_ops LIB DIR M K N\n");
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 3;
  }
  const std::string dir = argv[2];
  const int64_t M = std::stoll(argv[3]), K = std::stoll(argv[4]), N = std::stoll(argv[5]);
  const at::Tensor x = read(dir + "/x.f32", {M, K}, at::kFloat);
  const at::Tensor packed = read(dir + "/packed.u8", {N, 4 * ((K + 15) / 16)}, at::kByte);
  const at::Tensor scale = read(dir + "/scale.f32", {1}, at::kFloat);

  auto& dispatcher = c10::Dispatcher::singleton();
  auto linear = dispatcher.findSchemaOrThrow("lmops::ternary_linear", "")
                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const std::optional<at::Tensor>&, c10::string_view)>();
  auto quantize = dispatcher.findSchemaOrThrow("lmops::quantize_activation_absmax", "")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t)>();
  auto matmul = dispatcher.findSchemaOrThrow("lmops::ternary_matmul_int", "")
                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  write(dir + "/y.f32", linear.call(x, packed, scale, std::nullopt, "tiled"));
  auto [q, s] = quantize.call(x, 8);
  write(dir + "/q.i8", q);
  write(dir + "/s.f32", s);
  write(dir + "/acc.i32", matmul.call(q, packed, "tiled"));
  std::printf("ok\n");
  return 0;
}
