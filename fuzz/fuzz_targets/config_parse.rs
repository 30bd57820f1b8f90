//! The config parser and validator on arbitrary text: never a panic, and every
//! refusal names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match switchyard::config::parse(text, "fuzz.yaml") {
        Ok(config) => {
            // A config that validates must survive a round trip through its own YAML.
            if let Ok(again) = yaml_roundtrip(&config) {
                assert!(switchyard::config::parse(&again, "again.yaml").is_ok(), "{again}");
            }
        }
        Err(errors) => {
            for e in &errors.0 {
                assert!(e.to_string().starts_with("fuzz.yaml"), "{e}");
            }
        }
    }
});

fn yaml_roundtrip(c: &switchyard::config::Config) -> Result<String, ()> {
    switchyard::config::to_yaml(c).map_err(|_| ())
}
