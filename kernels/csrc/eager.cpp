// The eager CPU fast path of fused_gumbel._C: Python-callable functions (the C API, no pybind, no
// dispatcher) for the common eager call on a CPU tensor, where the host time of the Python layers
// (input checks, generator draw, backend choice, the dispatcher) is larger than the kernel.
//
// draw_key_offset(generator or None) -> (key, offset): the RNG spec's draw from a CPU generator
// (fused_gumbel/rng.py, draw_seed_offset: two 63-bit values, exactly what
// torch.randint(0, 2**63 - 1, (2,), generator=g) returns, consuming the same Mersenne Twister
// words), without creating a tensor.
//
// sample_eager(logits, tau, mode, dim, generator, salt, check_env, detached) -> Tensor or None: a
// whole fused_gumbel.gumbel_softmax or categorical call (mode 0 soft, 1 hard or one-hot, 2 index)
// when nothing about it needs Python: a plain CPU floating tensor with elements, a positive finite
// float (or int) tau, an in-range int dim, no forward-AD dual tensor, no torch.func transform, tracer, dispatch
// or torch-function mode, and, with `check_env` (no backend= argument), FUSED_GUMBEL_BACKEND unset or
// "auto". When autograd records the call (grad mode, logits requiring grad, not `detached` as
// categorical is), the output's grad_fn is the C++ GumbelSoftmaxFunction below. It then
// draws (key ^ salt, offset) as above (salt: the process rank's key, fused_gumbel._seeding) and
// runs the CPU kernel: the same sample, and the same generator state afterwards, as the Python
// path. Anything else returns None (the caller takes the Python path, which raises for bad input),
// so this never changes behaviour, only host time.
//
// launch_prelude(logits, salt, layout, stats_words) -> (y, key, offset, words, stats): the per-call
// host work of an eager Triton launch whose checks and plan the caller already holds
// (fused_gumbel.function.EagerCall): the draw from the default generator of the logits' device
// (fused_gumbel/rng.py, draw_seed_offset: the CPU draw above; a CUDA generator is a Philox generator
// itself, whose seed is the key and whose offset is reserved by advancing it by CUDA_OFFSET_INCREMENT,
// under its lock as Generator.get_offset/set_offset take it), the key XOR `salt`, the two values and
// the four int32 words the kernels take (key low, key high, offset low, offset high, each read as
// signed: kernels/gumbel_softmax.py, seed_words), and the outputs: y, by `layout`, empty_like the
// logits (0: they are dense row-major), a contiguous empty_like (1), or 2 + d: the categorical's int64
// indices, the logits' sizes without dimension d; and, for a positive `stats_words`, the launch's
// statistics buffer of that many words in the compute dtype (else None).
#include <Python.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/log.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/python_variable.h>

#include "cpu/cpu_host.h"
#include "cpu/gumbel_softmax_cpu_op.h"
#include "eager.h"

namespace fused_gumbel {
namespace {

constexpr uint64_t kKeyRange = (uint64_t(1) << 63) - 1;  // torch.randint(0, 2**63 - 1): values in [0, 2**63 - 1)

// The CPU generator behind a Python object (None: the default one) in storage, false with a Python error set.
bool cpu_generator(PyObject* object, at::Generator& storage) {
  if (object == Py_None) {
    storage = at::detail::getDefaultCPUGenerator();
    return true;
  }
  if (!THPGeneratorClass || !PyObject_TypeCheck(object, reinterpret_cast<PyTypeObject*>(THPGeneratorClass))) {
    PyErr_Format(PyExc_TypeError, "generator must be a torch.Generator or None, got %s", Py_TYPE(object)->tp_name);
    return false;
  }
  storage = reinterpret_cast<THPGenerator*>(object)->cdata;
  if (storage.device().type() != c10::DeviceType::CPU) {
    PyErr_SetString(PyExc_ValueError, "draw_key_offset needs a CPU generator");
    return false;
  }
  return true;
}

// Two values in [0, 2**63 - 1) as torch.randint draws them on CPU: random64() % range, in order,
// under the generator's lock (ATen's random_from_to for int64 with a range of at least 2**28).
void draw(at::Generator& generator, uint64_t& key, uint64_t& offset) {
  auto* impl = at::check_generator<at::CPUGeneratorImpl>(generator);
  std::lock_guard<std::mutex> lock(generator.mutex());
  key = impl->random64() % kKeyRange;
  offset = impl->random64() % kKeyRange;
}

PyObject* draw_key_offset(PyObject*, PyObject* object) {
  at::Generator generator;
  if (!cpu_generator(object, generator)) return nullptr;
  uint64_t key, offset;
  try {
    draw(generator, key, offset);
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
  return Py_BuildValue("(KK)", static_cast<unsigned long long>(key), static_cast<unsigned long long>(offset));
}

// Whether the call can skip Python: see the file comment. Cheap checks first.
bool plain_eager_context(const at::Tensor& logits, bool detached) {
  if (!logits.device().is_cpu() || !logits.defined()) return false;
  const auto type = logits.scalar_type();
  if (type != at::kFloat && type != at::kDouble && type != at::kHalf && type != at::kBFloat16) return false;
  if (logits.dim() == 0 || logits.numel() == 0) return false;
  // Tracer, functorch layers, Python dispatch (FakeTensor, TorchDispatchMode): extra included keys.
  const auto included = c10::impl::tls_local_dispatch_key_set().included_;
  if (!(included - c10::default_included_set).empty()) return false;
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  if (at::impl::PythonTorchFunctionTLS::stack_len() > 0) return false;
  return detached || !logits._fw_grad(/*level=*/0).defined();  // a forward-AD dual tensor takes the Function
}

using KernelForward = std::tuple<at::Tensor, std::optional<at::Tensor>>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                                        double, int64_t, int64_t, int64_t, int64_t);

// The forward op through the dispatcher (not the CPU function), for the ATen-op backward below: it
// also runs for batched gradients (autograd.grad(..., is_grads_batched=True)), under the
// dispatcher's vmap fallback. A plain CPU gradient takes the CPU backward itself.
const c10::TypedOperatorHandle<KernelForward>& kernel_forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fused_gumbel::kernel_forward", "").typed<KernelForward>();
  return op;
}

// log(y) where y > 0, else 0 (fused_gumbel/_autograd.py, log_domain).
at::Tensor log_domain(const at::Tensor& y, const at::Tensor& positive) {
  return at::where(positive, at::log(at::where(positive, y, at::ones_like(y))), at::zeros_like(y));
}

bool backend_is_auto() {
  const char* env = std::getenv("FUSED_GUMBEL_BACKEND");
  return env == nullptr || std::strcmp(env, "auto") == 0;
}

}  // namespace

// The C++ twin of fused_gumbel.function.GumbelSoftmaxFunction for a float tau, which the eager
// path records when autograd needs it (grad_fn CppNode<fused_gumbel::GumbelSoftmaxFunction>). Its backward: the one-launch kernel backward, or, under create_graph=True
// (double backward) or for a gradient the kernel cannot read, the same formulas in ATen ops as
// fused_gumbel/_autograd.py
// (vjp; hard samples rebuild y from the detached effective noise of a regenerated soft sample,
// soft_from_effective_noise). Forward-mode AD, torch.func and tensor temperatures never get here
// (sample_eager declines them: the Python Function serves those).
struct GumbelSoftmaxFunction : public torch::autograd::Function<GumbelSoftmaxFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, double tau, bool hard,
                            int64_t dim, int64_t key, int64_t offset) {
    // Hard: mode 3 also returns the soft sample of the same noise, which the backward reads (CPU).
    auto [y, soft] = cpu::forward(logits, std::nullopt, tau, hard ? 3 : 0, dim, key, offset);
    ctx->save_for_backward(hard ? torch::autograd::variable_list{logits, *soft} : torch::autograd::variable_list{y});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["hard"] = hard;
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["key"] = key;
    ctx->saved_data["offset"] = offset;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double tau = ctx->saved_data["tau"].toDouble();
    const bool hard = ctx->saved_data["hard"].toBool();
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const int64_t key = ctx->saved_data["key"].toInt();
    const int64_t offset = ctx->saved_data["offset"].toInt();
    const at::Tensor& grad_y = grads[0];
    at::Tensor grad_x;
    // create_graph=True: a kernel's result would carry no graph; a batched or wrapped gradient
    // (autograd.grad(..., is_grads_batched=True), a tensor subclass): the kernel reads plain memory.
    constexpr c10::DispatchKeySet wrapped({c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchBatched,
                                           c10::DispatchKey::FuncTorchGradWrapper,
                                           c10::DispatchKey::Python});
    if (c10::GradMode::is_enabled() || grad_y.key_set().has_any(wrapped) || !grad_y.device().is_cpu()) {
      at::Tensor y;
      if (hard) {
        const at::Tensor& logits = saved[0];
        const at::Tensor x = logits.to(cpu::compute_type(logits));
        at::Tensor y0;
        {
          c10::AutoGradMode no_grad(false);
          y0 = std::get<0>(kernel_forward_op().call(x.detach(), std::nullopt, tau, 0, dim, key, offset));
        }
        const at::Tensor positive = y0.gt(0);
        // x + g_eff = tau * log(y0) + (x - x0): the same value without cancelling a large |x| against itself.
        const at::Tensor perturbed = log_domain(y0, positive) * tau + at::where(positive, x - x.detach(), at::zeros_like(y0));
        y = at::softmax(at::where(positive, perturbed / tau, at::full_like(y0, -INFINITY)), dim);
      } else {
        y = saved[0].to(cpu::compute_type(saved[0]));
      }
      const at::Tensor dy = grad_y.to(y.scalar_type());
      const at::Tensor s = y * (dy - (dy * y).sum(dim, /*keepdim=*/true));
      grad_x = (s / tau).to(saved[0].scalar_type());
    } else {
      // Hard: the kept soft sample stands in for the logits, as in soft mode (no noise drawn again).
      // A plain CPU gradient: the CPU op itself, without the dispatcher's boxed autograd fallback
      // (a few us a call); the profiler sees the same op name.
      RECORD_FUNCTION("fused_gumbel::kernel_backward", c10::ArrayRef<const c10::IValue>{});
      grad_x = std::get<0>(cpu::backward(grad_y, saved.back(), std::nullopt, tau, false, dim, key, offset, false));
    }
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

namespace {

PyObject* sample_eager(PyObject*, PyObject* args) {
  PyObject *logits_object, *tau_object, *dim_object, *generator_object;
  int mode, check_env, detached;
  long long salt;
  if (!PyArg_ParseTuple(args, "OOiOOLpp", &logits_object, &tau_object, &mode, &dim_object, &generator_object, &salt,
                        &check_env, &detached)) {
    return nullptr;
  }
  // tau: a float, or an int (F.gumbel_softmax's default tau=1), which Python would convert the same way.
  const bool int_tau = PyLong_CheckExact(tau_object);
  if (!THPVariable_CheckExact(logits_object) || !(PyFloat_CheckExact(tau_object) || int_tau) ||
      !PyLong_CheckExact(dim_object) || mode < 0 || mode > 2) {
    Py_RETURN_NONE;
  }
  const double tau = int_tau ? PyLong_AsDouble(tau_object) : PyFloat_AS_DOUBLE(tau_object);
  if (tau == -1.0 && PyErr_Occurred()) {  // an int too large for a double: Python's checks say so
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  if (!(tau > 0.0 && std::isfinite(tau))) Py_RETURN_NONE;
  int overflow = 0;
  const long long dim = PyLong_AsLongLongAndOverflow(dim_object, &overflow);
  if (overflow) Py_RETURN_NONE;
  if (generator_object != Py_None &&
      !(THPGeneratorClass && Py_TYPE(generator_object) == reinterpret_cast<PyTypeObject*>(THPGeneratorClass))) {
    Py_RETURN_NONE;
  }
  if (check_env && !backend_is_auto()) Py_RETURN_NONE;
  try {
    const at::Tensor& logits = THPVariable_Unpack(logits_object);
    if (!plain_eager_context(logits, detached)) Py_RETURN_NONE;
    const int64_t ndim = logits.dim();
    if (dim < -ndim || dim >= ndim) Py_RETURN_NONE;
    at::Generator generator = generator_object == Py_None ? at::detail::getDefaultCPUGenerator()
                                                          : reinterpret_cast<THPGenerator*>(generator_object)->cdata;
    if (generator.device().type() != c10::DeviceType::CPU) Py_RETURN_NONE;
    at::Tensor out;
    {
      RECORD_FUNCTION("fused_gumbel::kernel_forward", c10::ArrayRef<const c10::IValue>{});
      uint64_t key, offset;
      draw(generator, key, offset);
      key ^= static_cast<uint64_t>(salt);
      const int64_t d = dim < 0 ? dim + ndim : dim;
      // The GIL is kept: the call is microseconds, and the kernel's own threads (at::parallel_for) need no Python.
      if (!detached && c10::GradMode::is_enabled() && logits.requires_grad()) {
        out = GumbelSoftmaxFunction::apply(logits, tau, mode == 1, d, static_cast<int64_t>(key), static_cast<int64_t>(offset));
      } else {
        out = std::get<0>(cpu::forward(logits, std::nullopt, tau, mode, d, static_cast<int64_t>(key),
                                       static_cast<int64_t>(offset)));
      }
    }
    return THPVariable_Wrap(std::move(out));
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

// fused_gumbel/rng.py, CUDA_OFFSET_INCREMENT: the offsets one call reserves on a CUDA generator.
constexpr uint64_t kCudaOffsetIncrement = 4;

// The RNG spec's (key, offset) draw from the default generator of `device` (see the file comment).
void draw_default(const c10::Device& device, uint64_t& key, uint64_t& offset) {
  if (device.is_cpu()) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    draw(generator, key, offset);
    return;
  }
  at::Generator generator = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(generator.mutex());
  offset = generator.get_offset();
  generator.set_offset(offset + kCudaOffsetIncrement);
  key = generator.current_seed();
}

// launch_prelude's output layouts: empty_like the logits, a contiguous empty_like, or (kIndexLayout + d)
// int64 indices of the logits' sizes without dimension d.
constexpr long long kLayoutOfLogits = 0, kContiguousLayout = 1, kIndexLayout = 2;

PyObject* launch_prelude(PyObject*, PyObject* args) {
  PyObject* logits_object;
  long long salt, layout, stats_words;
  if (!PyArg_ParseTuple(args, "OLLL", &logits_object, &salt, &layout, &stats_words)) return nullptr;
  if (!THPVariable_Check(logits_object)) {
    PyErr_Format(PyExc_TypeError, "launch_prelude expects a Tensor, got %s", Py_TYPE(logits_object)->tp_name);
    return nullptr;
  }
  try {
    const at::Tensor& logits = THPVariable_Unpack(logits_object);
    const int64_t index_dim = layout - kIndexLayout;
    if (layout < 0 || index_dim >= logits.dim()) {
      PyErr_Format(PyExc_ValueError, "launch_prelude: layout %lld for a %lld-dim tensor", layout,
                   static_cast<long long>(logits.dim()));
      return nullptr;
    }
    uint64_t key, offset;
    draw_default(logits.device(), key, offset);
    key ^= static_cast<uint64_t>(salt);
    at::Tensor y;
    if (layout == kLayoutOfLogits) {
      y = at::empty_like(logits);
    } else if (layout == kContiguousLayout) {
      y = at::empty_like(logits, at::MemoryFormat::Contiguous);
    } else {  // the categorical's indices: the logits' sizes without index_dim, row-major
      std::vector<int64_t> sizes(logits.sizes().begin(), logits.sizes().end());
      sizes.erase(sizes.begin() + index_dim);
      y = at::empty(sizes, logits.options().dtype(at::kLong));
    }
    PyObject* stats = Py_None;
    if (stats_words > 0) {
      stats = THPVariable_Wrap(at::empty({stats_words}, logits.options().dtype(cpu::compute_type(logits))));
    } else {
      Py_INCREF(stats);
    }
    // Each 32-bit word as the int32 with its bit pattern, as kernels/gumbel_softmax.py's _seed_args gives it.
    auto word = [](uint64_t value, int shift) { return static_cast<long>(static_cast<int32_t>(value >> shift)); };
    return Py_BuildValue("(NKK(llll)N)", THPVariable_Wrap(std::move(y)), static_cast<unsigned long long>(key),
                         static_cast<unsigned long long>(offset), word(key, 0), word(key, 32), word(offset, 0),
                         word(offset, 32), stats);
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

PyMethodDef methods[] = {
    {"draw_key_offset", draw_key_offset, METH_O,
     "draw_key_offset(generator or None) -> (key, offset): the RNG spec's draw from a CPU generator"},
    {"sample_eager", sample_eager, METH_VARARGS,
     "sample_eager(logits, tau, mode, dim, generator, salt, check_env, detached) -> Tensor or None: the eager CPU "
     "fast path"},
    {"launch_prelude", launch_prelude, METH_VARARGS,
     "launch_prelude(logits, salt, layout, stats_words) -> (y, key, offset, words, stats): an eager Triton "
     "launch's draw and output"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* eager_methods() { return methods; }

}  // namespace fused_gumbel
