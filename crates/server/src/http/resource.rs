//! Helpers every API's routes share: a resource served by GET/HEAD or by POST that answers
//! `OPTIONS` and a wrong method itself (405 with `Allow`, in the form of the API that owns the
//! resource), the request's deadline, and JSON answers held at their exact size.

use actix_web::http::Method;
use actix_web::http::header::{self, ContentType};
use actix_web::{FromRequest, Handler, HttpResponse, HttpResponseBuilder, Responder, web};
use serde::Serialize;
use tokio::time::Instant;

use crate::AppState;
use crate::http::problem::ApiError;

/// Methods of a read-only resource (RFC 9110: HEAD wherever GET is served).
pub(crate) const ALLOW_GET: &str = "GET, HEAD, OPTIONS";
/// Methods of an upload resource.
pub(crate) const ALLOW_POST: &str = "POST, OPTIONS";

/// How an API answers a method a resource does not serve (given the `Allow` value): a 405 in
/// that API's error form. The original API's and the V2 protocol's forms differ.
pub(crate) type WrongMethod = fn(&'static str) -> actix_web::Error;

/// Where an API registers its resources: each answers `OPTIONS` with its methods and any
/// method it does not serve with the API's [`WrongMethod`].
#[derive(Clone, Copy)]
pub(crate) struct Resources(pub WrongMethod);

/// The original API's and the service's own pages': a wrong method gets a problem document.
pub(crate) const PROBLEMS: Resources = Resources(problem_405);

fn problem_405(methods: &'static str) -> actix_web::Error {
    ApiError::MethodNotAllowed(methods).into()
}

impl Resources {
    /// A resource served by GET and HEAD (actix-http sends HEAD answers without their body).
    pub(crate) fn get<F, Args>(self, cfg: &mut web::ServiceConfig, path: &str, handler: F)
    where
        F: Handler<Args> + Clone,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let route = web::resource(path)
            .route(web::get().to(handler.clone()))
            .route(web::head().to(handler));
        self.register(cfg, route, ALLOW_GET);
    }

    /// A resource served by POST.
    pub(crate) fn post<F, Args>(self, cfg: &mut web::ServiceConfig, path: &str, handler: F)
    where
        F: Handler<Args> + Clone,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let route = web::resource(path).route(web::post().to(handler));
        self.register(cfg, route, ALLOW_POST);
    }

    /// `resource`, answering OPTIONS with `methods` and any other method with the 405.
    fn register(
        self,
        cfg: &mut web::ServiceConfig,
        resource: actix_web::Resource,
        methods: &'static str,
    ) {
        let Resources(wrong_method) = self;
        cfg.service(
            resource
                .route(web::method(Method::OPTIONS).to(move || async move { allow(methods) }))
                .default_service(web::to(move || async move {
                    Err::<HttpResponse, _>(wrong_method(methods))
                })),
        );
    }
}

/// `OPTIONS` on a resource: its methods (CORS preflights are answered before this, by the
/// CORS middleware, when origins are configured).
fn allow(methods: &'static str) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::ALLOW, methods))
        .finish()
}

/// The moment a request arriving now must be answered by: every wait of the request (its body,
/// decode memory, the queue, the model) ends there, so that no request holds what it took for
/// longer than `--request-timeout` in all.
pub(crate) fn deadline(state: &AppState) -> Instant {
    Instant::now() + state.config.request_timeout
}

/// `value` as a JSON answer whose buffer is exactly its length (`HttpResponse::json` keeps the
/// serialiser's buffer, which may have twice the capacity): an answer that is never read is
/// held as the memory bound counts it (`memory::MemoryBound::answers`).
pub(crate) fn json_exact<T: Serialize>(mut res: HttpResponseBuilder, value: &T) -> HttpResponse {
    let mut json = serde_json::to_vec(value).expect("an answer serialises");
    json.shrink_to_fit();
    res.content_type(ContentType::json()).body(json)
}
