pub mod rtmp;
