//! The loaded models: the one serving, and the one before it (kept so a
//! request may pin it, and so requests batched before a swap finish).

use std::sync::{Arc, RwLock};

use crate::core::model::LoadedModel;

#[derive(Default)]
struct Slots {
    current: Option<Arc<LoadedModel>>,
    previous: Option<Arc<LoadedModel>>,
}

/// Shared by the HTTP handlers, the compute thread and the lifecycle.
#[derive(Default)]
pub struct ModelSlots {
    inner: RwLock<Slots>,
}

impl ModelSlots {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Slots> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The model serving now.
    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.read().current.clone()
    }

    /// A loaded model by version.
    pub fn get(&self, version: &str) -> Option<Arc<LoadedModel>> {
        let slots = self.read();
        let candidates = [slots.current.clone(), slots.previous.clone()];
        candidates
            .into_iter()
            .flatten()
            .find(|m| m.info.version == version)
    }

    /// Every loaded model, the serving one first.
    pub fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        let slots = self.read();
        let all = [slots.current.clone(), slots.previous.clone()];
        all.into_iter().flatten().collect()
    }

    /// Makes `model` the serving one, in one step; returns the one it
    /// replaced.
    pub fn install(&self, model: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        let mut slots = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let old = slots.current.replace(model);
        if old.is_some() {
            slots.previous = old.clone();
        }
        old
    }
}
