// Runs the launchers of csrc/cuda/ternary_kernels.cu on the CPU emulator (built with
// -DLMOPS_CUDA_EMULATE; see tests/kernels/cuda_emu/cuda_emu.h) for tests/kernels/test_cuda_emulated.py.
//
// usage: driver OP DTYPE PATH M N K BITS HAS_BIAS DIR
//   OP: quant | linear | matmul_int; DTYPE: f32 | bf16 | f16 (activations and output; matmul_int: i8 in,
//   i32 out); PATH: gemv | gemm (which matmul kernel, whatever M is); files in DIR, raw little-endian:
//   in  x.bin (M*K of DTYPE, or int8 for matmul_int), packed.bin (N*4*ceil(K/16) uint8), gamma.bin (f32),
//       bias.bin (N of DTYPE, when HAS_BIAS)
//   out quant: q.bin (M*K int8), s.bin (M f32); linear: y.bin (M*N DTYPE); matmul_int: y.bin (M*N int32)
#include "ternary_kernels.cu"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

template <typename T>
int run(const std::string& op, const std::string& path, int64_t M, int64_t N, int64_t K, int bits, bool has_bias,
        const std::string& dir) {
  using namespace lmops::cuda;
  const int64_t KB = (K + 15) / 16, ldq = 16 * KB;
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  if (op == "quant") {
    auto x = read_file(dir + "/x.bin");
    std::vector<int8_t> q(M * K);
    std::vector<float> s(M);
    launch_quantize_rows<T>(reinterpret_cast<const T*>(x.data()), M, K, K, qmax, q.data(), s.data(), nullptr, nullptr);
    write_file(dir + "/q.bin", q.data(), q.size());
    write_file(dir + "/s.bin", s.data(), s.size() * sizeof(float));
    return 0;
  }
  auto packed = read_file(dir + "/packed.bin");
  auto x = read_file(dir + "/x.bin");
  std::vector<int8_t> xq(M * ldq);
  std::vector<float> s(M);
  std::vector<int32_t> rowsum(M);
  const auto* w = reinterpret_cast<const uint8_t*>(packed.data());
  if (op == "matmul_int") {
    launch_pad_rows(reinterpret_cast<const int8_t*>(x.data()), M, K, K, ldq, xq.data(), rowsum.data(), nullptr);
    std::vector<int32_t> y(M * N);
    const auto launch = path == "gemv" ? launch_ternary_gemv<int32_t> : launch_ternary_gemm<int32_t>;
    launch(xq.data(), nullptr, rowsum.data(), M, ldq, w, N, K, nullptr, Bias{}, y.data(), nullptr);
    write_file(dir + "/y.bin", y.data(), y.size() * sizeof(int32_t));
    return 0;
  }
  auto gamma = read_file(dir + "/gamma.bin");
  std::vector<char> bias;
  if (has_bias) bias = read_file(dir + "/bias.bin");
  launch_quantize_rows<T>(reinterpret_cast<const T*>(x.data()), M, K, ldq, qmax, xq.data(), s.data(), rowsum.data(),
                          nullptr);
  std::vector<T> y(M * N);
  const auto launch = path == "gemv" ? launch_ternary_gemv<T> : launch_ternary_gemm<T>;
  Bias b;
  if (has_bias) {
    b.data = bias.data();
    b.type = std::is_same_v<T, float> ? BiasType::kFloat : std::is_same_v<T, __half> ? BiasType::kHalf : BiasType::kBFloat16;
  }
  launch(xq.data(), s.data(), rowsum.data(), M, ldq, w, N, K, reinterpret_cast<const float*>(gamma.data()), b, y.data(),
         nullptr);
  write_file(dir + "/y.bin", y.data(), y.size() * sizeof(T));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 10) {
    std::fprintf(stderr, "usage: %s OP DTYPE PATH M N K BITS HAS_BIAS DIR\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1], dtype = argv[2], path = argv[3], dir = argv[9];
  const int64_t M = std::atoll(argv[4]), N = std::atoll(argv[5]), K = std::atoll(argv[6]);
  const int bits = std::atoi(argv[7]);
  const bool has_bias = std::atoi(argv[8]) != 0;
  if (dtype == "f32") return run<float>(op, path, M, N, K, bits, has_bias, dir);
  if (dtype == "bf16") return run<__nv_bfloat16>(op, path, M, N, K, bits, has_bias, dir);
  if (dtype == "f16") return run<__half>(op, path, M, N, K, bits, has_bias, dir);
  std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
  return 2;
}
