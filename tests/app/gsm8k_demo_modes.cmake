# The demo at a reduced size (fewer teacher traces and held-out problems than the default 1200 / 200), once per
# distillation mode (demo --modes): every mode's distilled student must beat the starting accuracy by at least
# MIN_GAIN points. The full demo's figures are in the README. Inputs: -DAPP -DWORK -DMIN_GAIN -DMODES (a,b,c)
# -DTRAIN_QUESTIONS -DEVAL_QUESTIONS -DTHREADS (0: all cores)
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${APP}" demo --work "${WORK}" --train-questions ${TRAIN_QUESTIONS} --eval-questions
                        ${EVAL_QUESTIONS} --modes ${MODES} --threads ${THREADS} --quiet
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "demo exited ${rc}\n${out}\n${err}")
endif()
message(STATUS "${out}")
string(REPLACE "," ";" modes "${MODES}")
foreach(mode IN LISTS modes)
  if(NOT out MATCHES "\n1 +${mode} +([0-9.]+)% +([0-9.]+)% +[+]?(-?[0-9.]+) +[0-9]+m[0-9]+s")
    message(FATAL_ERROR "no ${mode} row in the demo's table:\n${out}")
  endif()
  set(before ${CMAKE_MATCH_1})
  set(after ${CMAKE_MATCH_2})
  set(gain ${CMAKE_MATCH_3})
  if(NOT gain GREATER_EQUAL ${MIN_GAIN})
    message(FATAL_ERROR "${mode}: the distilled student gained ${gain} points (${before}% -> ${after}%), expected >= "
                        "${MIN_GAIN}")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK}")
