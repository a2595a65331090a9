// All coarse ops (each header: ref:: plain loops, the CPU fast path, and the recorded Var op).
#pragma once
#include "distill/ops/attention.hpp"
#include "distill/ops/cross_entropy.hpp"
#include "distill/ops/embedding.hpp"
#include "distill/ops/matmul.hpp"
#include "distill/ops/reduce.hpp"
#include "distill/ops/rmsnorm.hpp"
#include "distill/ops/rope.hpp"
#include "distill/ops/shape_ops.hpp"
#include "distill/ops/softmax.hpp"
