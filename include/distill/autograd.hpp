// The autograd layer: Var, the tape, backward(), no-grad, checkpointing, gradient checks.
#pragma once
#include "distill/autograd/checkpoint.hpp"
#include "distill/autograd/gradcheck.hpp"
#include "distill/autograd/var.hpp"
