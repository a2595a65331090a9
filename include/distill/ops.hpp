// All coarse ops (each header: ref:: plain loops, the CPU fast path, and the recorded Var op).
#pragma once
#include "distill/ops/matmul.hpp"
