# The demo at a reduced size (600 teacher traces instead of 1200, 100 held-out problems): the distilled student must
# beat its starting accuracy by at least MIN_GAIN points. The full demo (`gsm8k_distill demo --seeds 1 2 3`) gains
# about 40 points per seed; its figures are in the README. Inputs: -DAPP -DWORK -DMIN_GAIN
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${APP}" demo --work "${WORK}" --train-questions 600 --eval-questions 100 --quiet
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "demo exited ${rc}\n${out}\n${err}")
endif()
message(STATUS "${out}")
if(NOT out MATCHES "\n1 +[0-9.]+% +[0-9]+/[0-9]+ +([0-9.]+)% +([0-9.]+)% +[+]?(-?[0-9.]+)")
  message(FATAL_ERROR "no result row in the demo's table:\n${out}")
endif()
set(before ${CMAKE_MATCH_1})
set(after ${CMAKE_MATCH_2})
set(gain ${CMAKE_MATCH_3})
if(NOT gain GREATER_EQUAL ${MIN_GAIN})
  message(FATAL_ERROR "the distilled student gained ${gain} points (${before}% -> ${after}%), expected >= ${MIN_GAIN}")
endif()
file(REMOVE_RECURSE "${WORK}")
