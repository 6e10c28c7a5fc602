# The static library cordsnet_client (cordsnet_client.c): included by examples/c and examples/cpp.
# Needs find_package(cJSON) and find_package(OpenSSL COMPONENTS Crypto) first.
add_library(cordsnet_client STATIC "${CMAKE_CURRENT_LIST_DIR}/cordsnet_client.c")
set_target_properties(cordsnet_client PROPERTIES C_STANDARD 11 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
target_compile_options(cordsnet_client PRIVATE -Wall -Wextra)
target_include_directories(cordsnet_client PUBLIC "${CMAKE_CURRENT_LIST_DIR}" ${CJSON_INCLUDE_DIRS})
target_link_libraries(cordsnet_client PUBLIC ${CJSON_LIBRARIES} OpenSSL::Crypto m)
