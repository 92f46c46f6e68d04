//! What several integration tests share: the real server, in-process, on a loopback port.

/// The server as the pods run it (`iris_serve::app`, pod name `pod`), on a loopback port, on a
/// thread and runtime of its own for the rest of the test process.
pub fn real_server(pod: &'static str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let state = iris_serve::AppState::new(
                iris_serve::model::Model::embedded().expect("model"),
                pod,
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, iris_serve::app(state)).await;
        });
    });
    addr
}
