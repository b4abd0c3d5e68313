// The failure counter and CHECK macro of the host-side kernel checks (index_check.cpp,
// quant_check.cpp): print the first 10 failed properties, count them all.
#pragma once
#include <cstdio>

static int fails = 0;
#define CHECK(cond, ...)                           \
    do {                                           \
        if (!(cond)) {                             \
            if (fails < 10) {                      \
                std::printf("FAIL: " __VA_ARGS__); \
                std::printf("\n");                 \
            }                                      \
            ++fails;                               \
        }                                          \
    } while (0)
