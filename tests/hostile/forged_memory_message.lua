-- expect: runtime_error: not enough memory
error("not enough memory")
