fn main() {
    // The Node addon (feature `node`): each platform's link settings for a Node-API module.
    #[cfg(feature = "node")]
    napi_build::setup();
}
