# Installs the build tree into a scratch prefix, then configures, builds and runs the consumer project.
# Inputs: BUILD_DIR, CONSUMER, GENERATOR, CXX
set(root "${BUILD_DIR}/install-test")
file(REMOVE_RECURSE "${root}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${root}/prefix")
run("${CMAKE_COMMAND}" -S "${CONSUMER}" -B "${root}/build" -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX}"
    "-DCMAKE_PREFIX_PATH=${root}/prefix" -DCMAKE_BUILD_TYPE=Release)
run("${CMAKE_COMMAND}" --build "${root}/build")
run("${root}/build/consumer")
run("${root}/build/consumer_text")
