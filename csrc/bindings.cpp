// The only PYBIND11_MODULE of vito_fast: every C++ entry point is bound here.
#include <pybind11/pybind11.h>

#include "sampler.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "vito_fast C++ extension";
    m.attr("ABI_VERSION") = 1;
}
