"""The embedded demo model: the synthetic long-document QA generator (`synthetic`), the training
script (`train`), the tiny random-LED builder of the tests and benchmarks (`tiny`), the shipped
trained checkpoint (`checkpoint/`, exported on first use by `model`) and `ledserve demo` (`run`)."""
