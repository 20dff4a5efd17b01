//! Exposes PyO3's interpreter cfgs (`Py_GIL_DISABLED` in particular) to this
//! crate, so code that relies on the GIL can be left out of free-threaded builds.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
