;; A test WASM plugin: on_query_complete logs one line per answered query (with a time, or not).
(module
  (import "env" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "wasm: query completed after some microseconds")
  (data (i32.const 64) "wasm: query completed in no time")
  (func (export "alloc") (param $size i32) (result i32) (i32.const 1024))
  (func (export "on_query_complete") (param $sql i32) (param $len i32) (param $micros i32)
    (if (i32.gt_s (local.get $micros) (i32.const 0))
      (then (call $log (i32.const 0) (i32.const 45)))
      (else (call $log (i32.const 64) (i32.const 32)))))
)
