//! Gzips `src/api/openapi.json` (the OpenAPI description the unit tests generate from the
//! code and check) into `$OUT_DIR/openapi.json.gz`, which the binary serves as it is: the
//! aarch64 binary has a 10 MB budget and the plain text would take ~10x the room.

use std::io::Write;

fn main() {
    const SPEC: &str = "src/api/openapi.json";
    println!("cargo:rerun-if-changed={SPEC}");
    let text = std::fs::read(SPEC).expect("read src/api/openapi.json");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&text).expect("gzip");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("openapi.json.gz"), gz.finish().expect("gzip"))
        .expect("write openapi.json.gz");
}
