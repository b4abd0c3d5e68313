//! Paged KV cache: a page pool and per-sequence page tables in CSR form.
