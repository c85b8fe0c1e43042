pub mod rtmp;
pub mod rtsp;
