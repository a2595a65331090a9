// The causal-LM loss of supervised fine-tuning (SPEC §9.1; transformers' ForCausalLMLoss):
//   labels [B, T] aligned with ids (-100 = not trained: prompt, padding, packed boundaries)
//   targets[b, t] = labels[b, t + 1] (the shift: position t predicts token t + 1), targets[b, T-1] = -100
//   loss = sum over trained positions of CE(logits, target) / num_items
// num_items is the count of trained positions over every micro-batch of the optimizer step (HF's
// num_items_in_batch; across processes, the global count): each micro-batch's loss is its share of one mean,
// so accumulating k micro-batches equals one step on their union. A step with num_items = 0 is an error
// (count_targets lets the caller find that out before any forward).
// Without a final softcap the logits are never materialized: the final norm's output goes through
// linear_cross_entropy with the lm head (Gemma3: V = 262,144).
#pragma once
#include <cstdint>

#include "distill/models/transformer.hpp"

namespace distill::train {

// labels shifted left by one, -100 at each row's end.
inline Tensor<int32_t> shift_labels(const Tensor<int32_t>& labels) {
  DISTILL_CHECK(labels.rank() == 2, "shift_labels: labels must be [batch, seq], got ", labels.shape().str());
  const int64_t B = labels.dim(0), T = labels.dim(1);
  auto t = Tensor<int32_t>::full({B, T}, kIgnoreIndex);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i + 1 < T; ++i) t(b, i) = labels(b, i + 1);
  return t;
}

// Trained positions of a micro-batch after the shift.
inline int64_t count_targets(const Tensor<int32_t>& labels) {
  DISTILL_CHECK(labels.rank() == 2, "count_targets: labels must be [batch, seq], got ", labels.shape().str());
  int64_t n = 0;
  for (int64_t b = 0; b < labels.dim(0); ++b)
    for (int64_t i = 1; i < labels.dim(1); ++i) n += labels(b, i) != kIgnoreIndex;
  return n;
}

namespace detail {
inline void check_num_items(int64_t num_items) {
  DISTILL_CHECK(num_items > 0,
                "causal_lm_loss: the optimizer step has no trained token (every label is -100 after the shift: "
                "prompt-only or fully truncated examples) — nothing to learn from this batch");
}
}  // namespace detail

// This micro-batch's share of the step loss from the model's final hidden states h (its `hidden(...)` output):
// sum of its CE terms / num_items (a rank-0 Var in T). For callers that use h for more than the CE (distillation).
template <models::TransformerSpec Spec, class T, class D>
Var<T, D> causal_lm_loss_from_hidden(const models::Transformer<Spec, T, D>& model, const Var<T, D>& h,
                                     const Tensor<int32_t>& labels, int64_t num_items) {
  detail::check_num_items(num_items);
  const Tensor<int32_t> targets = shift_labels(labels);
  const int64_t count = count_targets(labels);
  Var<T, D> mean;
  if (model.dims().final_softcap > 0)
    mean = cross_entropy(model.head(h), targets);
  else
    mean = linear_cross_entropy(h, model.weights().lm_head, targets);
  return mean * static_cast<compute_t<T>>(static_cast<double>(count) / static_cast<double>(num_items));
}

// This micro-batch's share of the step loss: sum of its CE terms / num_items (a rank-0 Var in T).
template <models::TransformerSpec Spec, class T, class D>
Var<T, D> causal_lm_loss(const models::Transformer<Spec, T, D>& model, const Tensor<int32_t>& ids,
                         const Tensor<int32_t>& labels, const Tensor<int32_t>& attention_mask, int64_t num_items,
                         const models::RunOptions& opt = {}) {
  detail::check_num_items(num_items);
  check_same_shape(labels.shape(), ids.shape(), "causal_lm_loss labels vs ids");
  return causal_lm_loss_from_hidden(model, model.hidden(ids, attention_mask, nullptr, opt), labels, num_items);
}

}  // namespace distill::train
