# embed - writes a C source holding a file's bytes, so that a program carries the file.
#
#   cmake -DINPUT=file -DOUTPUT=out.c -DNAME=symbol -P cmake/embed.cmake
#
# out.c defines `const char symbol[]` (the bytes, then a NUL) and `const size_t
# symbol_len` (the number of bytes, without the NUL).
if(NOT INPUT OR NOT OUTPUT OR NOT NAME)
  message(FATAL_ERROR "embed.cmake: set INPUT, OUTPUT and NAME")
endif()
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR len "${digits} / 2")
# 0xNN, for every byte, 16 to a line (CMake's regular expressions have no {n})
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REPEAT "0x[0-9a-f][0-9a-f]," 16 line)
string(REGEX REPLACE "(${line})" "\\1\n    " bytes "${bytes}")
get_filename_component(base "${INPUT}" NAME)
file(WRITE "${OUTPUT}.tmp"
  "/* generated from ${base} by cmake/embed.cmake: do not edit */\n"
  "#include <stddef.h>\n"
  "extern const char ${NAME}[];\n"
  "extern const size_t ${NAME}_len;\n"
  "const char ${NAME}[] = {\n    ${bytes}0x00};\n"
  "const size_t ${NAME}_len = ${len};\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
