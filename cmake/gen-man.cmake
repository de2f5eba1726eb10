# gen-man.cmake - postbox.conf(5) from its template and the settings list that postboxd
# prints from its settings table (postboxd --print-settings-mdoc):
#   cmake -DIN=man/postbox.conf.5.in -DSETTINGS=settings.mdoc -DOUT=postbox.conf.5 -P gen-man.cmake
# The template's line "@SETTINGS@" is replaced by the list.
cmake_minimum_required(VERSION 3.18)
file(READ "${IN}" template)
file(READ "${SETTINGS}" settings)
string(REPLACE "@SETTINGS@\n" "${settings}" page "${template}")
if(page STREQUAL template)
  message(FATAL_ERROR "${IN} has no @SETTINGS@ line")
endif()
file(WRITE "${OUT}" "${page}")
