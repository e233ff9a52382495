//! Model store: see README.md. (Filled in by the model-store work.)
