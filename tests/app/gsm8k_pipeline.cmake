# gsm8k_distill end to end on the committed demo models, each stage through the binary:
#   generate killed for real (DISTILL_TEST_KILL_AT: _Exit(86) after a flush, leaving a torn record) and run again
#   == an uninterrupted run (the same records; their order follows the continuous batching); malformed input lines reported with their line number and skipped, or
#   fatal with --strict; an empty data set and a fully-filtered one are clear errors; train killed and resumed ==
#   uninterrupted (adapter bytes); mpirun -np 2 train == one process with twice the batch; metrics and the plot
#   beside them; eval's before/after table; --config; ask; --save-logits (one top-K record per trace, a row per
#   generated token, unchanged by kill + resume; a cut file is a clear error); train --mode jsd --teacher (same
#   tokenizer), kl/uld/feature across tokenizers, kl from the saved logits.
# Inputs: -DAPP=<gsm8k_distill> -DMODELS=<dir with teacher/ and student/> -DWORK=<dir> -DDISTILL=<distill tool>
# [-DMPIEXEC=<mpirun>]
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")

function(run expect_rc)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL ${expect_rc})
    message(FATAL_ERROR "${ARGN}\nexited ${rc}, expected ${expect_rc}\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

function(expect_match what text regex)
  if(NOT text MATCHES "${regex}")
    message(FATAL_ERROR "${what}: expected to match ${regex}, got:\n${text}")
  endif()
endfunction()

# The same records, whatever their order (continuous batching writes a record when its trace finishes).
function(same_records a b)
  file(STRINGS "${a}" la)
  file(STRINGS "${b}" lb)
  list(SORT la)
  list(SORT lb)
  if(NOT la STREQUAL lb)
    message(FATAL_ERROR "${a} and ${b} hold different records")
  endif()
endfunction()

function(same a b)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${a}" "${b}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${a} and ${b} differ")
  endif()
endfunction()

# Questions: the demo writes its synthetic problems as GSM8K JSONL; a short demo run also checks that it completes.
run(0 "${APP}" demo --models "${MODELS}" --work "${WORK}/demo" --train-questions 24 --eval-questions 8 --epochs 1
    --threads 1 --quiet)
expect_match("demo table" "${out}" "student before")
set(questions "${WORK}/demo/seed-1/questions.jsonl")

set(gen generate --teacher "${MODELS}/teacher" --data "${questions}" --batch-size 4 --greedy --max-new-tokens 160
    --limit 16 --threads 1 --quiet --save-logits 5)
run(0 "${APP}" ${gen} --out "${WORK}/straight/traces.jsonl")
expect_match("generate summary" "${out}" "^16 records, [0-9]+ accepted")
run(86 ${CMAKE_COMMAND} -E env DISTILL_TEST_KILL_AT=generate:batch:2 "${APP}" ${gen} --out "${WORK}/killed/traces.jsonl")
file(READ "${WORK}/killed/traces.jsonl" torn)
expect_match("the killed run's records end in a torn line" "${torn}" "torn-rec$")
run(0 "${APP}" ${gen} --out "${WORK}/killed/traces.jsonl")
same_records("${WORK}/straight/traces.jsonl" "${WORK}/killed/traces.jsonl")
same("${WORK}/straight/traces.accepted.jsonl" "${WORK}/killed/traces.accepted.jsonl")  # sorted by id
file(COPY_FILE "${WORK}/killed/traces.jsonl" "${WORK}/traces.before.jsonl")
run(0 "${APP}" ${gen} --out "${WORK}/killed/traces.jsonl")  # all done: nothing to generate, nothing duplicated
same("${WORK}/killed/traces.jsonl" "${WORK}/traces.before.jsonl")

# --save-logits 5: one top-5 record per trace with a row per generated token, the same after the kill and resume.
set(tokens 0)
file(STRINGS "${WORK}/straight/traces.jsonl" recs)
foreach(r IN LISTS recs)
  string(JSON n GET "${r}" tokens)
  math(EXPR tokens "${tokens} + ${n}")
endforeach()
run(0 "${DISTILL}" topk-info "${WORK}/straight/traces.topk.bin")
expect_match("top-k file" "${out}" "\"k\":5,\"positions\":${tokens},\"records\":16,")
set(topk_straight "${out}")
run(0 "${DISTILL}" topk-info "${WORK}/killed/traces.topk.bin")
if(NOT out STREQUAL topk_straight)
  message(FATAL_ERROR "top-k files differ after kill and resume:\n${topk_straight}\n${out}")
endif()
file(SIZE "${WORK}/straight/traces.topk.bin" topk_size)
math(EXPR cut "${topk_size} - 3")
execute_process(COMMAND head -c ${cut} "${WORK}/straight/traces.topk.bin" OUTPUT_FILE "${WORK}/cut.topk.bin")
run(1 "${DISTILL}" topk-info "${WORK}/cut.topk.bin")
expect_match("a cut top-k file" "${err}" "truncated inside record 16")

# A malformed line (line 3) is reported with its line number and skipped; --strict makes it fatal.
file(STRINGS "${questions}" lines LIMIT_COUNT 4)
list(GET lines 0 l1)
list(GET lines 1 l2)
list(GET lines 3 l4)
file(WRITE "${WORK}/bad.jsonl" "${l1}\n${l2}\n{\"question\": \"unterminated\n${l4}\n")
run(0 "${APP}" generate --teacher "${MODELS}/teacher" --data "${WORK}/bad.jsonl" --out "${WORK}/bad/traces.jsonl"
    --greedy --max-new-tokens 8 --threads 1 --quiet)
expect_match("malformed line warning" "${err}" "bad.jsonl:3: .*line skipped")
expect_match("3 records from 4 lines" "${out}" "^3 records")
run(1 "${APP}" generate --teacher "${MODELS}/teacher" --data "${WORK}/bad.jsonl" --out "${WORK}/bad2/traces.jsonl"
    --greedy --max-new-tokens 8 --strict --quiet)
expect_match("--strict" "${err}" "error: .*bad.jsonl:3: ")
# Empty data, and traces that are all rejected (every one truncated at 8 tokens): clear errors.
file(WRITE "${WORK}/empty.jsonl" "")
run(1 "${APP}" generate --teacher "${MODELS}/teacher" --data "${WORK}/empty.jsonl" --out "${WORK}/e/traces.jsonl")
expect_match("empty data" "${err}" "empty.jsonl: no usable")
run(1 "${APP}" train --student "${MODELS}/student" --traces "${WORK}/bad/traces.jsonl" --out "${WORK}/none" --quiet)
expect_match("fully filtered" "${err}" "no accepted traces.*every record was rejected: truncated")

# train: killed in step 3 and resumed == uninterrupted.
set(train train --student "${MODELS}/student" --traces "${WORK}/straight/traces.jsonl" --epochs 2 --batch-size 4
    --grad-accum 1 --lr 1e-3 --lora-r 8 --lora-alpha 16 --warmup-steps 1 --save-every 2 --threads 1 --quiet)
run(0 "${APP}" ${train} --out "${WORK}/t_straight")
run(86 ${CMAKE_COMMAND} -E env DISTILL_TEST_KILL_AT=step:3 "${APP}" ${train} --out "${WORK}/t_killed")
run(0 "${APP}" ${train} --out "${WORK}/t_killed" --resume)
same("${WORK}/t_straight/adapter/adapter_model.safetensors" "${WORK}/t_killed/adapter/adapter_model.safetensors")
file(STRINGS "${WORK}/t_straight/train_log.jsonl" log LIMIT_COUNT 1)
expect_match("metrics" "${log}" "\"grad_norm\".*\"loss\".*\"lr\".*\"peak_rss_mb\".*\"tokens_per_second\"")
file(GLOB ckpts "${WORK}/t_straight/checkpoint-*/COMPLETE")
list(LENGTH ckpts n_ckpts)
if(NOT EXISTS "${WORK}/t_straight/train_curves.svg" OR n_ckpts LESS 2)
  message(FATAL_ERROR "train: expected train_curves.svg and complete checkpoints, got ${n_ckpts}")
endif()

# Logit distillation (--mode jsd) from the demo teacher into a student with its tokenizer (a 1-layer random model
# with the teacher's config, made by distill random-model); both loss parts in the metrics. Without --teacher, a
# clear error.
run(0 "${DISTILL}" random-model --config "${MODELS}/teacher/config.json" --layers 1 --tokenizer "${MODELS}/teacher"
    --out "${WORK}/kd_student")
set(kd train --traces "${WORK}/straight/traces.jsonl" --max-steps 2 --batch-size 2 --grad-accum 1 --no-quantize
    --threads 1 --quiet)
run(0 "${APP}" ${kd} --student "${WORK}/kd_student" --out "${WORK}/kd" --mode jsd --teacher "${MODELS}/teacher")
file(STRINGS "${WORK}/kd/train_log.jsonl" kdlog LIMIT_COUNT 1)
expect_match("kd metrics" "${kdlog}" "\"ce_loss\":[0-9.e-]+.*\"kd_loss\":[0-9.e-]+")
run(1 "${APP}" ${kd} --student "${WORK}/kd_student" --out "${WORK}/kd2" --mode uld)
expect_match("uld without a teacher" "${err}" "needs --teacher")
# Across tokenizers (the demo's Qwen3 teacher, its Gemma3 student): KL over the shared vocabulary at aligned
# positions, ULD, and feature distillation (its projections saved beside the adapter).
foreach(mode kl uld feature)
  run(0 "${APP}" ${kd} --student "${MODELS}/student" --out "${WORK}/x_${mode}" --mode ${mode} --teacher
      "${MODELS}/teacher")
  expect_match("${mode} across tokenizers: alignment" "${err}" "another tokenizer\\): [0-9]+ of [0-9]+ trained tokens aligned")
  file(STRINGS "${WORK}/x_${mode}/train_log.jsonl" xlog LIMIT_COUNT 1)
  expect_match("${mode} metrics" "${xlog}" "\"ce_loss\":[0-9.e-]+.*\"kd_loss\":[0-9.e-]+.*\"mode\":\"${mode}\"")
endforeach()
if(NOT EXISTS "${WORK}/x_feature/adapter/feature_projections.safetensors")
  message(FATAL_ERROR "feature: no feature_projections.safetensors beside the adapter")
endif()
# Offline: the top-5 logits saved beside the traces, without the teacher model (its tokenizer named).
run(1 "${APP}" ${kd} --student "${MODELS}/student" --out "${WORK}/off1" --mode kl)
expect_match("offline logits need the teacher's tokenizer" "${err}" "--teacher-tokenizer")
run(0 "${APP}" ${kd} --student "${MODELS}/student" --out "${WORK}/off2" --mode kl --teacher-tokenizer
    "${MODELS}/teacher")
expect_match("offline alignment" "${err}" "offline teacher logits \\(K = 5\\): [0-9]+ of [0-9]+ trained tokens aligned")

# Data parallel: mpirun -np 2 with micro-batch 2 == one process with micro-batch 4 (within f32 tolerance).
if(MPIEXEC)
  set(dp train --student "${MODELS}/student" --traces "${WORK}/straight/traces.jsonl" --epochs 2 --grad-accum 1
      --lr 1e-3 --lora-r 8 --lora-alpha 16 --warmup-steps 1 --threads 1 --quiet)
  run(0 "${APP}" ${dp} --batch-size 4 --out "${WORK}/dp_one")
  run(0 ${MPIEXEC} -np 2 --oversubscribe --allow-run-as-root "${APP}" ${dp} --batch-size 2 --out "${WORK}/dp_two")
  run(0 "${DISTILL}" diff "${WORK}/dp_one/adapter/adapter_model.safetensors"
      "${WORK}/dp_two/adapter/adapter_model.safetensors" --atol 1e-6 --rtol 1e-4)
  message(STATUS "mpirun -np 2 vs one process: ${out}")
else()
  message(STATUS "no mpirun: the data-parallel case is skipped")
endif()

# eval: base and adapter -> a before/after table; per-example records and a summary per model.
run(0 "${APP}" eval --model "${MODELS}/student" --adapter none --adapter "${WORK}/t_straight/adapter" --data
    "${questions}" --limit 6 --load-in-4bit --max-new-tokens 160 --out "${WORK}/eval" --threads 1 --quiet)
expect_match("eval table" "${out}" "strict +flexible.*\nbase .*\nchange ")
file(STRINGS "${WORK}/eval/base.jsonl" ev)
list(LENGTH ev n_ev)
if(NOT n_ev EQUAL 6 OR NOT EXISTS "${WORK}/eval/base.json")
  message(FATAL_ERROR "eval: expected 6 per-example records and a summary, got ${n_ev}")
endif()

# --config: options from a TOML file, one [section] per subcommand.
file(WRITE "${WORK}/recipe.toml" "[eval]\nlimit = 2\nmax-new-tokens = 40\nload-in-4bit = true\n")
run(0 "${APP}" --config "${WORK}/recipe.toml" eval --model "${MODELS}/student" --data "${questions}"
    --out "${WORK}/eval_cfg" --threads 1 --quiet)
file(STRINGS "${WORK}/eval_cfg/base.jsonl" ev)
list(LENGTH ev n_ev)
if(NOT n_ev EQUAL 2)
  message(FATAL_ERROR "--config: [eval] limit = 2 gave ${n_ev} records")
endif()
run(0 "${APP}" eval --model "${MODELS}/student" --adapter "${WORK}/t_straight/adapter" --data "${questions}"
    --limit 2 --dtype bf16 --max-new-tokens 40 --out "${WORK}/eval_bf16" --label bf16 --threads 1 --quiet)
expect_match("eval --dtype bf16" "${out}" "\nbf16 ")

run(0 "${APP}" ask "Mia has 3 boxes with 4 pencils in each box. She gives away 5 pencils. How many pencils does she have left?"
    --model "${MODELS}/student" --adapter "${WORK}/t_straight/adapter" --max-new-tokens 80 --threads 1)
expect_match("ask" "${out}" "base: Gemma3.*distilled: Gemma3 f32 \\+ LoRA r=8")
file(REMOVE_RECURSE "${WORK}")
