# `distill train` killed for real (DISTILL_TEST_KILL_AT makes the process _Exit(86) at the named stage), then
# `--resume`: the final adapter must equal an uninterrupted run's byte for byte; then `quantize`, `merge` and
# `logits --adapter` on the result must run. Inputs: -DDISTILL=<binary> -DMODEL=<tiny checkpoint> -DWORK=<dir>
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
# Pre-tokenized examples (the tiny model has no tokenizer): 12 rows, the first 3 tokens untrained.
set(data "")
foreach(i RANGE 0 11)
  math(EXPR a "(${i} * 37 + 11) % 250 + 3")
  math(EXPR b "(${i} * 53 + 7) % 250 + 3")
  math(EXPR c "(${i} * 71 + 5) % 250 + 3")
  math(EXPR d "(${i} * 13 + 2) % 250 + 3")
  string(APPEND data "{\"ids\": [${a}, ${b}, ${c}, ${d}, ${a}, ${c}, ${b}], \"labels\": [-100, -100, -100, ${d}, ${a}, ${c}, ${b}]}\n")
endforeach()
file(WRITE "${WORK}/data.jsonl" "${data}")
set(args train --model "${MODEL}" --data "${WORK}/data.jsonl" --max-steps 6 --save-every 3 --batch-size 2
    --grad-accum 2 --lora-r 4 --lora-alpha 8 --lr 1e-2 --lora-dropout 0.1 --quiet --threads 1)

function(run expect_rc)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL ${expect_rc})
    message(FATAL_ERROR "${ARGN}\nexited ${rc}, expected ${expect_rc}\n${out}\n${err}")
  endif()
endfunction()

run(0 "${DISTILL}" ${args} --out "${WORK}/straight")
run(86 ${CMAKE_COMMAND} -E env DISTILL_TEST_KILL_AT=step:5 "${DISTILL}" ${args} --out "${WORK}/killed")
if(EXISTS "${WORK}/killed/checkpoint-6" OR NOT EXISTS "${WORK}/killed/checkpoint-3/COMPLETE")
  message(FATAL_ERROR "after a kill in step 5: expected checkpoint-3 complete and no checkpoint-6")
endif()
run(86 ${CMAKE_COMMAND} -E env DISTILL_TEST_KILL_AT=checkpoint:6 "${DISTILL}" ${args} --out "${WORK}/killed" --resume)
if(EXISTS "${WORK}/killed/checkpoint-6" OR NOT EXISTS "${WORK}/killed/checkpoint-3/COMPLETE")
  message(FATAL_ERROR "after a kill while writing checkpoint-6: expected checkpoint-3 intact and no checkpoint-6")
endif()
run(0 "${DISTILL}" ${args} --out "${WORK}/killed" --resume)
foreach(f adapter/adapter_model.safetensors checkpoint-6/optimizer.safetensors checkpoint-6/adapter_model.safetensors)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${WORK}/straight/${f}" "${WORK}/killed/${f}"
                  RESULT_VARIABLE same)
  if(NOT same EQUAL 0)
    message(FATAL_ERROR "${f} differs between the uninterrupted and the killed-and-resumed run")
  endif()
endforeach()
run(1 "${DISTILL}" ${args} --out "${WORK}/straight")  # checkpoints there: refuses without --resume
run(0 "${DISTILL}" quantize --model "${MODEL}" --out "${WORK}/nf4")
file(WRITE "${WORK}/ids.json" "[[1, 5, 9, 200, 17]]")
execute_process(COMMAND "${DISTILL}" logits --model "${WORK}/nf4" --adapter "${WORK}/straight/adapter" --last
                INPUT_FILE "${WORK}/ids.json" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "^\\{\"shape\":\\[1,256\\]")
  message(FATAL_ERROR "logits --adapter on the NF4 checkpoint: rc ${rc}\n${out}\n${err}")
endif()
run(0 "${DISTILL}" merge --model "${WORK}/nf4" --adapter "${WORK}/straight/adapter" --out "${WORK}/merged")
file(REMOVE_RECURSE "${WORK}")
