//! The shipped training configs load, inherit and validate.

use std::path::PathBuf;

use chexvision_config::{Config, Loader, Validate};
use chexvision_models::ModelConfig;
use chexvision_trainer::TrainSettings;

fn load(name: &str) -> Config<TrainSettings> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name);
    let config: Config<TrainSettings> = Loader::new()
        .file(Some(&path))
        .load()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        config.service.validate().is_empty(),
        "{name}: {:?}",
        config.service.validate()
    );
    config
}

#[test]
fn training_configs_inherit_the_recipe() {
    let default = load("default.yaml");
    assert_eq!(default.service.model, ModelConfig::densenet121());
    assert_eq!(
        (
            default.service.recipe.batch_size,
            default.service.recipe.accumulation_steps
        ),
        (24, 4)
    );
    assert_eq!(default.service.recipe.label_smoothing, 0.1);
    assert_eq!(default.service.recipe.patience, 15);

    let transfer = load("transfer.yaml");
    assert_eq!(transfer.service.model, ModelConfig::densenet121());
    assert_eq!(transfer.service.recipe.frozen_epochs, 5);
    assert_eq!(
        transfer.service.recipe.weight_decay, 1e-4,
        "inherited from default.yaml"
    );

    let scratch = load("scratch.yaml");
    assert_eq!(scratch.service.model, ModelConfig::se_resnet());

    let tiny = load("tiny.yaml");
    assert_eq!(tiny.service.image_size, 64);
    assert!(matches!(tiny.service.model, ModelConfig::Densenet(ref c) if c.growth_rate == 8));
    assert_eq!(
        tiny.service.recipe.label_smoothing, 0.1,
        "inherited from default.yaml"
    );
}
