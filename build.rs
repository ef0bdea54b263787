//! Re-embed the migrations whenever a file in either folder changes (refinery's `embed_migrations!` alone does
//! not notice a new file).
fn main() {
    println!("cargo:rerun-if-changed=control_migrations");
    println!("cargo:rerun-if-changed=tenant_migrations");
}
