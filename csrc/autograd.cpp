// Autograd of lmops::ternary_linear, registered at the Autograd key so that a call that needs no gradient
// costs one C++ redispatch (no Python), and one that does records a node whose backward is the op
// lmops::ternary_linear_backward (plain torch, lmops_kernels/ternary.py; decomposed under torch.compile).
//
// Straight-through estimator through the activation quantizer Q: y = Q(x) (q gamma)^T + b, so
// dy/dx := (q gamma) and grad_x = grad_y @ (q gamma); grad_bias = grad_y summed over tokens.
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

}  // namespace

TORCH_LIBRARY_IMPL(lmops, Autograd, m) { m.impl("ternary_linear", &ternary_linear_autograd); }
