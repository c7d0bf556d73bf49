;; Spins forever: fuel must stop it.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "on_query_start") (param i32 i32) (loop $forever (br $forever))))
