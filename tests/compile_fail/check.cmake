# A compile-fail case: SRC must NOT compile, and the compiler's message must contain the text on the
# file's "// EXPECT: " line (the static_assert sentence). As a control, SRC compiled with
# -DDISTILL_CONTROL (the same code with the misuse corrected) MUST compile, so the case cannot pass
# because of an unrelated error such as a wrong include path.
# Inputs: -DCXX=compiler -DSRC=file -DINCLUDES=dir;dir
file(STRINGS "${SRC}" expect REGEX "^// EXPECT: ")
string(REGEX REPLACE "^// EXPECT: " "" expect "${expect}")
if(expect STREQUAL "")
  message(FATAL_ERROR "${SRC} has no '// EXPECT: ' line")
endif()
set(args -std=c++20 -fsyntax-only)
foreach(i IN LISTS INCLUDES)
  list(APPEND args "-I${i}")
endforeach()
execute_process(COMMAND "${CXX}" ${args} -DDISTILL_CONTROL "${SRC}" RESULT_VARIABLE rc_ok ERROR_VARIABLE err_ok)
if(NOT rc_ok EQUAL 0)
  message(FATAL_ERROR "control build (-DDISTILL_CONTROL) of ${SRC} must compile but failed:\n${err_ok}")
endif()
execute_process(COMMAND "${CXX}" ${args} "${SRC}" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SRC} compiled, but it must not")
endif()
string(FIND "${err}" "${expect}" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "${SRC} failed to compile, but not with the expected message '${expect}':\n${err}")
endif()
message(STATUS "did not compile, as expected: ${expect}")
