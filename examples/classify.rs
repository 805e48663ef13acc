//! Classify a photo with your own checkpoint (any head size; `.pth` or `.safetensors`):
//! `cargo run --release --example classify -- photo.jpg pets.pth resnet18`
use webcnn::engine::{Device, Session};
use webcnn::{models::Model, preprocess, tasks, weights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, file, id] = &args[..] else {
        return Err("usage: classify IMAGE WEIGHTS MODEL_ID".into());
    };
    let loaded = weights::from_bytes_for(Model::get(id)?, &std::fs::read(file)?)?;
    let model = loaded.model; // its head sized from the file
    let img = preprocess::decode(&std::fs::read(image)?)?;
    let x = preprocess::batch(&[img], &model.preprocess);
    let mut session =
        Session::new_blocking(&model.graph(x.shape())?, loaded.tensors, Device::Auto)?;
    let logits = session.run_blocking(&x)?.remove(0);
    for p in &tasks::classify(&model, &logits, 5)?[0] {
        println!("{:>6.2}%  {} ({})", p.probability * 100.0, p.label, p.index);
    }
    Ok(())
}
