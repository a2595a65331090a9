// Umbrella header: includes the whole library (it only includes).
#pragma once
#include "distill/autograd.hpp"
#include "distill/core/device.hpp"
#include "distill/core/dtype.hpp"
#include "distill/core/error.hpp"
#include "distill/core/nvtx.hpp"
#include "distill/ops.hpp"
#include "distill/tensor/tensor.hpp"
#include "distill/train/adamw.hpp"
