//! `GET /`: the web page (one file, built into the binary: no external
//! network).

use actix_web::HttpResponse;

const INDEX: &str = include_str!("../../assets/index.html");

pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(INDEX)
}
