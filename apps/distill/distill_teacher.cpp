// The teacher side of train's distillation modes (declared in distill_teacher.hpp).
#include "distill_teacher.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>

#include "distill/data/topk_logits.hpp"
#include "distill/io/hf_hub.hpp"
#include "distill/models/gemma3.hpp"
#include "distill/models/qwen3.hpp"
#include "distill/train/align.hpp"
#include "distill/train/feature_kd.hpp"

namespace distill::app {

namespace {

// A teacher model behind one interface: the final norm's output and the requested blocks' outputs for a batch
// (f32, no tape), and its lm head.
struct TeacherModel {
  int64_t vocab = 0, hidden = 0, layers = 0, max_positions = 0;
  Tensor<float> head;  // [V, C]
  std::function<void(const Tensor<int32_t>& ids, const Tensor<int32_t>& mask, const std::vector<int64_t>& blocks,
                     Tensor<float>& final_hidden, std::map<int64_t, Tensor<float>>& block_out)>
      run;
};

TeacherModel load_teacher_model(const std::string& dir) {
  const io::ModelConfig cfg = io::load_model_config(dir);
  auto make = [&]<models::TransformerSpec S>() {
    auto m = std::make_shared<const models::Transformer<S, float>>(models::Transformer<S, float>::load(dir));
    DISTILL_CHECK(m->dims().final_softcap == 0, "--teacher ", dir, ": final logit softcaps are not supported here");
    TeacherModel t;
    t.vocab = m->dims().vocab;
    t.hidden = m->dims().hidden;
    t.layers = m->dims().layers;
    t.max_positions = m->dims().max_positions;
    t.head = m->weights().lm_head.value().contiguous();
    t.run = [m](const Tensor<int32_t>& ids, const Tensor<int32_t>& mask, const std::vector<int64_t>& blocks,
                Tensor<float>& final_hidden, std::map<int64_t, Tensor<float>>& block_out) {
      autograd::NoGradGuard ng;
      models::Capture<float> cap;
      for (int64_t l : blocks) cap.request(models::Hook::Block, l);
      final_hidden = m->hidden(ids, mask, blocks.empty() ? nullptr : &cap).value().contiguous();
      for (int64_t l : blocks) block_out[l] = cap.at(models::Hook::Block, l).value().contiguous();
    };
    return t;
  };
  if (cfg.arch == io::ModelArch::Qwen3) return make.template operator()<models::qwen3::kFamily>();
  return make.template operator()<models::gemma3::kFamily>();
}

bool same_tokenizer(const text::Tokenizer& a, const text::Tokenizer& b) {
  if (a.vocab_size() != b.vocab_size()) return false;
  for (int32_t id = 0; id < a.vocab_size(); ++id) {
    std::string x, y;
    try {
      x = a.id_to_token(id);
    } catch (const Error&) {
    }
    try {
      y = b.id_to_token(id);
    } catch (const Error&) {
    }
    if (x != y || a.is_special(id) != b.is_special(id)) return false;
  }
  return true;
}

// The trained (labelled) positions of an example, and their tokens' text.
struct Trained {
  std::vector<int64_t> pos;
  train::TokenText text;
};
Trained trained_text(const text::Tokenizer& tok, const data::SftExample& e) {
  Trained t;
  std::vector<int32_t> ids;
  for (size_t i = 1; i < e.labels.size(); ++i)
    if (e.labels[i] != data::kIgnoreLabel) {
      t.pos.push_back(static_cast<int64_t>(i));
      ids.push_back(e.ids[i]);
    }
  t.text = train::token_text(tok, ids);
  return t;
}

// Rows [idx] of x [N, C] as [n, C].
Tensor<float> gather_rows(const Tensor<float>& x, const std::vector<int64_t>& idx) {
  const int64_t C = x.shape().back();
  Tensor<float> out = Tensor<float>::zeros({static_cast<int64_t>(idx.size()), C});
  for (size_t i = 0; i < idx.size(); ++i)
    std::copy_n(x.data() + idx[i] * C, C, out.data() + static_cast<int64_t>(i) * C);
  return out;
}

// The end-of-turn markers of the two chat formats, paired in the shared vocabulary.
std::vector<std::pair<std::string, std::string>> end_pairs(text::ChatFormat teacher, text::ChatFormat student) {
  auto end_of = [](text::ChatFormat f) {
    return std::string(f == text::ChatFormat::Qwen3Thinking ? "<|im_end|>" : "<end_of_turn>");
  };
  return {{end_of(teacher), end_of(student)}};
}

train::DistillConfig base_config(const TrainCmd& o) {
  train::DistillConfig dc;
  if (o.mode == "kl" || o.mode == "rkl" || o.mode == "jsd") dc.kd.div = train::parse_kd_divergence(o.mode);
  dc.kd.temperature = o.temperature;
  dc.kd.beta = o.beta;
  dc.ce_weight = o.ce_weight;
  dc.kd_weight = o.kd_weight;
  dc.topk = o.topk;
  return dc;
}

// Offline: top-K rows from generate --save-logits files, aligned through the emitted tokens' text.
train::DistillConfig offline(const TrainCmd& o, const StudentInfo& st, const std::vector<data::SftExample>& ex,
                             const std::vector<ExampleText>& texts, std::ostream& err) {
  DISTILL_CHECK(o.mode == "kl" || o.mode == "rkl" || o.mode == "jsd", "--teacher-logits serves --mode kl, rkl or ",
                "jsd (uld and feature need the teacher itself: --teacher DIR)");
  DISTILL_CHECK(o.temperature == 1.0, "--teacher-logits: the stored log-probs are at T = 1; --temperature must be 1");
  auto readers = std::make_shared<std::vector<data::TopkReader>>();
  for (const auto& f : o.teacher_logits) readers->emplace_back(f);
  const uint32_t K = readers->front().k();
  for (const auto& r : *readers)
    DISTILL_CHECK(r.k() == K, "--teacher-logits: the files hold different K (", K, " and ", r.k(), ")");
  const auto stok = text::Tokenizer::from_file(st.dir);
  const std::string tdir = !o.teacher_tokenizer.empty() ? o.teacher_tokenizer
                           : !o.teacher.empty()         ? io::resolve_model_dir(o.teacher)
                                                        : st.dir;
  DISTILL_CHECK(tdir != st.dir || readers->front().vocab() == static_cast<uint32_t>(stok.vocab_size()) ||
                    readers->front().vocab() == static_cast<uint32_t>(st.vocab),
                "--teacher-logits: the logits are ", readers->front().vocab(), " tokens wide and the student's ",
                "tokenizer has ", stok.vocab_size(), ": they come from another tokenizer; name it with ",
                "--teacher-tokenizer DIR");
  const auto ttok = text::Tokenizer::from_file(tdir);
  auto map = std::make_shared<train::VocabMap>();
  const bool same = tdir == st.dir || same_tokenizer(ttok, stok);
  if (same) {
    *map = train::identity_vocabulary(std::min<int64_t>(readers->front().vocab(), st.vocab));
  } else {
    *map = train::shared_vocabulary(ttok, stok,
                                    end_pairs(text::detect_chat_format(tdir), text::detect_chat_format(st.dir)));
    err << "[distill] teacher logits in another vocabulary: " << map->shared << " of " << ttok.vocab_size()
        << " teacher tokens have an identical student token (the rest count as tail mass); distilled at positions "
           "where both sides predict the same text\n";
  }
  // Per example: the file and the (student position, record row) pairs.
  struct Where {
    int reader = -1;
    std::vector<std::pair<int64_t, int64_t>> pairs;
  };
  auto where = std::make_shared<std::vector<Where>>(ex.size());
  int64_t aligned = 0, trained = 0, missing = 0;
  for (size_t e = 0; e < ex.size(); ++e) {
    DISTILL_CHECK(!texts[e].id.empty(), "--teacher-logits: example ", e + 1,
                  " has no \"id\" (the logits are found by the trace's id)");
    Where& w = (*where)[e];
    for (size_t r = 0; r < readers->size(); ++r)
      if ((*readers)[r].contains(texts[e].id)) {
        w.reader = static_cast<int>(r);
        break;
      }
    const Trained s = trained_text(stok, ex[e]);
    trained += static_cast<int64_t>(s.pos.size());
    if (w.reader < 0) {
      ++missing;
      continue;
    }
    const data::TopkRecord rec = (*readers)[static_cast<size_t>(w.reader)].get(texts[e].id);
    const train::TokenText t = train::token_text(ttok, rec.tokens);
    for (const auto& [ks, kt] : train::align_tokens(s.text, 0, t, 0, /*whole_tokens=*/!same))
      w.pairs.emplace_back(s.pos[static_cast<size_t>(ks)], kt);
    aligned += static_cast<int64_t>(w.pairs.size());
  }
  DISTILL_CHECK(missing < static_cast<int64_t>(ex.size()), "--teacher-logits: none of the ", ex.size(),
                " examples has a record in the file(s) (were they generated for these traces?)");
  err << "[distill] offline teacher logits (K = " << K << "): " << aligned << " of " << trained
      << " trained tokens aligned" << (missing ? ", " + std::to_string(missing) + " examples without a record" : "")
      << "\n";
  train::DistillConfig dc = base_config(o);
  dc.target = train::DistillTarget::TopK;
  dc.topk = K;
  const int64_t V = st.vocab;
  dc.aligned = [readers, where, texts, map, K, V](std::span<const int64_t> exs, const data::Batch& mb) {
    train::AlignedTargets at;
    const int64_t T = mb.ids.dim(1);
    std::vector<float> rows;
    for (size_t b = 0; b < exs.size(); ++b) {
      const Where& w = (*where)[static_cast<size_t>(exs[b])];
      if (w.reader < 0) continue;
      const data::TopkRecord rec = (*readers)[static_cast<size_t>(w.reader)].get(texts[static_cast<size_t>(exs[b])].id);
      for (const auto& [p, r] : w.pairs) {
        if (p >= T) continue;
        at.rows.push_back(static_cast<int64_t>(b) * T + p - 1);
        const size_t at_row = rows.size();
        rows.resize(at_row + 2 * K + 1);
        train::topk_row_from_stored(rec.ids.data() + r * K, rec.logprobs.data() + r * K,
                                    rec.tail[static_cast<size_t>(r)], K, *map, V, rows.data() + at_row);
      }
    }
    at.values = Tensor<float>::from_vector({static_cast<int64_t>(at.rows.size()), 2 * static_cast<int64_t>(K) + 1},
                                           std::move(rows));
    return at;
  };
  return dc;
}

}  // namespace

train::DistillConfig make_distillation(const TrainCmd& o, const StudentInfo& st,
                                       const std::vector<data::SftExample>& ex, const std::vector<ExampleText>& texts,
                                       std::ostream& err) {
  DISTILL_CHECK(o.mode == "kl" || o.mode == "rkl" || o.mode == "jsd" || o.mode == "uld" || o.mode == "feature",
                "--mode must be sft, kl, rkl, jsd, uld or feature, got \"", o.mode, "\"");
  DISTILL_CHECK(texts.size() == ex.size(), "internal: ", texts.size(), " example texts for ", ex.size(), " examples");
  if (!o.teacher_logits.empty()) return offline(o, st, ex, texts, err);
  DISTILL_CHECK(!o.teacher.empty(), "--mode ", o.mode,
                " needs --teacher DIR (or, for kl/rkl/jsd, --teacher-logits FILE from generate --save-logits)");
  const std::string tdir = io::resolve_model_dir(o.teacher);
  const auto stok = text::Tokenizer::from_file(st.dir);
  const auto ttok = text::Tokenizer::from_file(tdir);
  const bool same = same_tokenizer(ttok, stok);
  auto teacher = std::make_shared<TeacherModel>(load_teacher_model(tdir));
  train::DistillConfig dc = base_config(o);

  if (same && (o.mode == "kl" || o.mode == "rkl" || o.mode == "jsd")) {
    // Token-aligned: the teacher reads the student's ids.
    dc.target = train::DistillTarget::Logits;
    if (teacher->vocab != st.vocab) {
      dc.vocab_limit = stok.vocab_size();
      DISTILL_CHECK(dc.vocab_limit <= std::min(teacher->vocab, st.vocab), "--teacher ", tdir, ": the tokenizer has ",
                    dc.vocab_limit, " tokens, more than the models' logits (", teacher->vocab, " and ", st.vocab, ")");
      err << "[distill] note: the teacher's logits are " << teacher->vocab << " wide and the student's " << st.vocab
          << " (padded embeddings); both are compared over the tokenizer's " << dc.vocab_limit << " tokens only\n";
    }
    dc.teacher = [teacher](const Tensor<int32_t>& ids, const Tensor<int32_t>& mask) -> train::TeacherRows {
      Tensor<float> h;
      std::map<int64_t, Tensor<float>> none;
      teacher->run(ids, mask, {}, h, none);
      const Tensor<float> w = teacher->head;
      return [h, w](int64_t r0, int64_t r1) { return train::head_logits(h, w, r0, r1); };
    };
    return dc;
  }

  // Aligned positions: the teacher reads its own rendering of each example.
  const text::ChatFormat tfmt = text::detect_chat_format(tdir), sfmt = text::detect_chat_format(st.dir);
  auto map = std::make_shared<train::VocabMap>(same ? train::identity_vocabulary(st.vocab)
                                                    : train::shared_vocabulary(ttok, stok, end_pairs(tfmt, sfmt)));
  auto tex = std::make_shared<std::vector<data::SftExample>>(ex.size());
  auto pairs = std::make_shared<std::vector<std::vector<std::pair<int64_t, int64_t>>>>(ex.size());
  int64_t aligned = 0, trained = 0;
  for (size_t e = 0; e < ex.size(); ++e) {
    DISTILL_CHECK(!texts[e].teacher.empty(), "--mode ", o.mode, ": example ", e + 1,
                  " is pre-tokenized; the teacher needs its text (a \"messages\" or question/answer record)");
    (*tex)[e] = data::build_sft_example(ttok, tfmt, texts[e].teacher, teacher->max_positions);
    const Trained s = trained_text(stok, ex[e]), t = trained_text(ttok, (*tex)[e]);
    trained += static_cast<int64_t>(s.pos.size());
    if (t.pos.empty()) continue;
    // KL/JSD across tokenizers compare next-token distributions: only where both sides' next tokens are the same
    // text (a student token spelling more or less than the teacher's would be pulled toward another spelling).
    const bool whole = !same && (o.mode == "kl" || o.mode == "rkl" || o.mode == "jsd");
    for (const auto& [ks, kt] : train::align_tokens(s.text, 0, t.text, 0, whole))
      (*pairs)[e].emplace_back(s.pos[static_cast<size_t>(ks)], t.pos[static_cast<size_t>(kt)] - 1);
    aligned += static_cast<int64_t>((*pairs)[e].size());
  }
  err << "[distill] " << o.mode << " against " << tdir << " (" << (same ? "same tokenizer" : "another tokenizer")
      << "): " << aligned << " of " << trained << " trained tokens aligned with the teacher's"
      << (same ? "" : "; " + std::to_string(map->shared) + " shared vocabulary tokens") << "\n";

  std::vector<int64_t> blocks;
  if (o.mode == "feature") {
    dc.target = train::DistillTarget::Feature;
    if (o.layer_map.empty()) {
      const auto prop = train::proportional_layer_map(st.layers, teacher->layers);
      for (size_t l = 0; l < prop.size(); ++l) dc.layer_map[static_cast<int64_t>(l)] = prop[l];
    } else {
      dc.layer_map = train::parse_layer_map(o.layer_map, st.layers, teacher->layers);
    }
    dc.teacher_hidden = teacher->hidden;
    dc.feature_loss = train::parse_feature_loss(o.feature_loss);
    dc.projection_seed = o.seed;
    for (const auto& [sl, tl] : dc.layer_map) blocks.push_back(tl);
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  } else if (o.mode == "uld") {
    dc.target = train::DistillTarget::Uld;
  } else {
    dc.target = train::DistillTarget::TopK;
    DISTILL_CHECK(o.topk >= 1, "--topk must be >= 1");
  }
  const train::DistillConfig shape = dc;  // what the callback needs of the settings
  dc.aligned = [teacher, tex, pairs, map, blocks, shape](std::span<const int64_t> exs, const data::Batch& mb) {
    std::vector<const data::SftExample*> rows;
    for (int64_t e : exs) rows.push_back(&(*tex)[static_cast<size_t>(e)]);
    const data::Batch tb = data::make_batch(rows, 0);
    Tensor<float> h;
    std::map<int64_t, Tensor<float>> outs;
    teacher->run(tb.ids, tb.attention_mask, blocks, h, outs);
    const int64_t Ts = mb.ids.dim(1), Tt = tb.ids.dim(1);
    train::AlignedTargets at;
    std::vector<int64_t> trows;
    for (size_t b = 0; b < exs.size(); ++b)
      for (const auto& [p, r] : (*pairs)[static_cast<size_t>(exs[b])]) {
        if (p >= Ts) continue;
        at.rows.push_back(static_cast<int64_t>(b) * Ts + p - 1);
        trows.push_back(static_cast<int64_t>(b) * Tt + r);
      }
    const auto n = static_cast<int64_t>(at.rows.size());
    if (shape.target == train::DistillTarget::Feature) {
      for (const auto& [sl, tl] : shape.layer_map) {
        const Tensor<float>& x = outs.at(tl);
        at.features[sl] = gather_rows(x.reshape({x.numel() / x.shape().back(), x.shape().back()}), trows);
      }
      return at;
    }
    const Tensor<float> hg = gather_rows(h.reshape({h.numel() / h.shape().back(), h.shape().back()}), trows);
    if (shape.target == train::DistillTarget::Uld) {  // the full rows (V_teacher floats per aligned position)
      at.values = train::head_logits(hg, teacher->head, 0, n);
      return at;
    }
    // Top-K rows, the teacher's logits made chunk_rows positions at a time (never all [n, V_teacher] at once).
    const int64_t K = shape.topk, VT = teacher->vocab;
    at.values = Tensor<float>::zeros({n, 2 * K + 1});
    for (int64_t r0 = 0; r0 < n; r0 += shape.chunk_rows) {
      const int64_t r1 = std::min(n, r0 + shape.chunk_rows);
      const Tensor<float> logits = train::head_logits(hg, teacher->head, r0, r1);
      for (int64_t i = r0; i < r1; ++i)
        train::topk_row_from_logits(logits.data() + (i - r0) * VT, VT, *map, K, shape.kd.temperature,
                                    at.values.data() + i * (2 * K + 1));
    }
    return at;
  };
  return dc;
}

}  // namespace distill::app
