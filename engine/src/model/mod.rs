//! Models. (Contract; implementation in progress.)
use std::path::Path;
use std::sync::Arc;

use crate::generate::{GenerateOutput, GenerateParams, Piece};
use crate::{EngineError, Tokenizer};

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Worker threads for the kernels; `None` = `available_parallelism()`.
    pub threads: Option<usize>,
}

/// A loaded model: weights stay in the memory mapping. `Send + Sync`; generation takes `&self`.
pub struct Model {
    _private: (),
}

impl Model {
    pub fn load(_path: &Path, _opts: &LoadOptions) -> Result<Model, EngineError> {
        unimplemented!("engine in progress")
    }
    pub fn from_mmap(_map: Arc<memmap2::Mmap>, _opts: &LoadOptions) -> Result<Model, EngineError> {
        unimplemented!("engine in progress")
    }
    /// Context length in tokens (`<arch>.context_length`).
    pub fn n_ctx(&self) -> usize {
        unimplemented!()
    }
    pub fn n_vocab(&self) -> usize {
        unimplemented!()
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        unimplemented!()
    }
    /// Runs the prompt, then samples until a stop condition. `on_piece` sees every generated
    /// token; returning `ControlFlow::Break(())` stops generation (`StopReason::Cancelled`).
    pub fn generate(
        &self,
        _prompt: &[u32],
        _params: &GenerateParams,
        _on_piece: &mut dyn FnMut(Piece<'_>) -> std::ops::ControlFlow<()>,
    ) -> Result<GenerateOutput, EngineError> {
        unimplemented!()
    }
}
