// The eager CPU fast path's Python functions (eager.cpp), added to fused_gumbel._C's module by ops.cpp.
#pragma once

#include <Python.h>

namespace fused_gumbel {
PyMethodDef* eager_methods();
}  // namespace fused_gumbel
