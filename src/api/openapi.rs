//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of every route, its parameters,
//! statuses and JSON shapes.
//!
//! It is generated from the code by utoipa (the handlers' `#[utoipa::path]` and the
//! views' `ToSchema`, attached under `cfg(test)`) in the unit test below, which fails when
//! `openapi.json` beside this file differs from what the code says (and rewrites it when
//! run with `EDGEREC_BLESS=1`); `build.rs` gzips that file into the binary. Not generated
//! at start-up: utoipa's schema builders would be compiled into the binary, and the
//! aarch64 build has a few kilobytes left of its 10 MB budget. This way the binary
//! carries ~10 KB of gzip, and the description still cannot drift from the code without
//! a unit test failing.

use axum::http::HeaderMap;
use axum::response::Response;

/// Where the description is served (without a token: it says what the source says).
pub const PATH: &str = "/api/v1/openapi.json";

const DOCUMENT_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json.gz"));

/// This description, sent gzipped.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "status",
    responses(
        (status = 200, description = "This description (OpenAPI 3.1), gzipped",
            body = Object, content_type = "application/json"),
        (status = 406, description = "The client does not accept gzip", body = super::ErrorBody),
    )))]
pub async fn document(request: HeaderMap) -> Response {
    super::gzipped::response(&request, "application/json", "no-cache", DOCUMENT_GZ)
}

#[cfg(test)]
mod generated {
    use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat};
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
    use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{Object, Ref, RefOr, ResponseBuilder, Type};
    use utoipa::{Modify, OpenApi};

    use crate::api::{
        catalog, deletes, files, hls, metrics, page, recordings, sources, tasks, uploads,
    };

    #[derive(OpenApi)]
    #[openapi(
        info(
            title = "edgerec",
            description = "The local API of an edgerec venue recorder: live streams, \
                recordings and their playback, the recording model (templates and rules), \
                RTSP cameras, the upload queue and callbacks, the disk policy. Every route \
                but the status ones needs a bearer token when `[http] tokens` are set; \
                playback routes also take a signed URL (`exp` and `sig`)."
        ),
        paths(
            crate::api::healthz,
            metrics::scrape,
            page::index,
            page::hls_js,
            super::document,
            crate::api::streams,
            recordings::list,
            recordings::get_one,
            deletes::delete_recording,
            deletes::list,
            files::download,
            catalog::list_templates,
            catalog::create_template,
            catalog::get_template,
            catalog::replace_template,
            catalog::delete_template,
            catalog::list_rules,
            catalog::create_rule,
            catalog::delete_rule,
            sources::list,
            sources::create,
            sources::get_one,
            sources::delete,
            tasks::create,
            tasks::list,
            tasks::get_one,
            tasks::cancel,
            uploads::list,
            uploads::retry,
            uploads::callbacks,
            uploads::retry_callback,
            uploads::storage,
            hls::recording_playlist,
            hls::recording_segment,
            hls::live_playlist,
        ),
        components(schemas(crate::api::ErrorBody)),
        modifiers(&Guarded, &MediaBodies, &FlattenedViews),
    )]
    struct ApiDoc;

    /// What `access::guard` adds to every route but the public ones: the bearer token (and
    /// for playback routes the signed URL's `exp` and `sig`), and its 401 and 403.
    struct Guarded;

    impl Modify for Guarded {
        fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
            let components = openapi.components.get_or_insert_with(Default::default);
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            components.add_security_scheme(
                "playback_signature",
                SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                    "sig",
                    "HMAC-SHA256 of the path and `exp` under `[http] playback_key`, as the \
                     API hands out playback URLs",
                ))),
            );
            for (path, item) in openapi.paths.paths.iter_mut() {
                let public =
                    path == "/healthz" || path == super::PATH || crate::api::page::is_public(path);
                if public {
                    continue;
                }
                let playback = crate::api::access::is_playback_path(path);
                for op in operations(item) {
                    let mut security = vec![SecurityRequirement::new::<_, _, &str>("bearer", [])];
                    if playback {
                        security.push(SecurityRequirement::new::<_, _, &str>(
                            "playback_signature",
                            [],
                        ));
                        op.parameters
                            .get_or_insert_with(Vec::new)
                            .extend(signature_parameters());
                    }
                    op.security = Some(security);
                    for (status, why) in [
                        ("401", "No token, or an unknown one"),
                        (
                            "403",
                            "The token may only read, or the playback signature is bad or expired",
                        ),
                    ] {
                        let response = ResponseBuilder::new()
                            .description(why)
                            .content(
                                "application/json",
                                utoipa::openapi::ContentBuilder::new()
                                    .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                                    .build(),
                            )
                            .build();
                        op.responses
                            .responses
                            .insert(status.to_owned(), RefOr::T(response));
                    }
                }
            }
        }
    }

    /// Media (playlists, segments, files, pages) as what it is: text or bytes, not the
    /// arrays of integers utoipa makes of `Vec<u8>`.
    struct MediaBodies;

    impl Modify for MediaBodies {
        fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
            let responses = openapi.paths.paths.values_mut().flat_map(|item| {
                operations(item).flat_map(|op| op.responses.responses.values_mut())
            });
            for response in responses {
                let RefOr::T(response) = response else {
                    continue;
                };
                for (media_type, content) in response.content.iter_mut() {
                    if media_type != "application/json" {
                        let format = (!media_type.starts_with("text/")
                            && !media_type.contains("mpegurl"))
                        .then_some(SchemaFormat::KnownFormat(KnownFormat::Binary));
                        content.schema = Some(RefOr::T(Schema::Object(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .format(format)
                                .build(),
                        )));
                    }
                }
            }
        }
    }

    /// The operations of a path (the API uses these four methods).
    fn operations(
        item: &mut utoipa::openapi::PathItem,
    ) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    }

    /// A view that flattens a config type into itself (`TemplateView` = `Template` +
    /// `source`) as one object: utoipa makes an `allOf` of the two, and the config type's
    /// `additionalProperties: false` (it refuses unknown keys on input) would then refuse
    /// the view's own fields.
    struct FlattenedViews;

    impl Modify for FlattenedViews {
        fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
            let Some(components) = openapi.components.as_mut() else {
                return;
            };
            let named = components.schemas.clone();
            for schema in components.schemas.values_mut() {
                if let Some(merged) = merge_all_of(schema, &named) {
                    *schema = RefOr::T(Schema::Object(merged));
                }
            }
        }
    }

    /// `schema` as one object when it is an `allOf` of objects (by reference or inline).
    fn merge_all_of(
        schema: &RefOr<Schema>,
        named: &std::collections::BTreeMap<String, RefOr<Schema>>,
    ) -> Option<Object> {
        let RefOr::T(Schema::AllOf(all)) = schema else {
            return None;
        };
        let mut merged = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(all.description.clone())
            .build();
        for part in &all.items {
            let part = match part {
                RefOr::Ref(r) => {
                    named.get(r.ref_location.strip_prefix("#/components/schemas/")?)?
                }
                inline => inline,
            };
            let RefOr::T(Schema::Object(object)) = part else {
                return None;
            };
            merged.properties.extend(object.properties.clone());
            merged.required.extend(object.required.iter().cloned());
        }
        Some(merged)
    }

    fn signature_parameters() -> [Parameter; 2] {
        let query = |name: &str, description: &str, ty: Type| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .description(Some(description))
                .schema(Some(Object::with_type(ty)))
                .build()
        };
        [
            query("exp", "A signed URL's expiry, unix seconds", Type::Integer),
            query("sig", "A signed URL's signature", Type::String),
        ]
    }

    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json");

    /// The served description is what the code says (`EDGEREC_BLESS=1` rewrites it).
    #[test]
    fn openapi_json_is_what_the_code_says() {
        let generated = ApiDoc::openapi().to_pretty_json().unwrap() + "\n";
        if std::env::var_os("EDGEREC_BLESS").is_some() {
            std::fs::write(FILE, &generated).unwrap();
        }
        let stored = std::fs::read_to_string(FILE).unwrap_or_default();
        assert!(
            stored == generated,
            "src/api/openapi.json differs from what the code describes: run \
             `EDGEREC_BLESS=1 cargo test --lib openapi` and commit the file"
        );
    }

    /// Every route the router serves is described, and nothing else.
    #[test]
    fn every_route_is_described() {
        let described: std::collections::BTreeSet<String> =
            ApiDoc::openapi().paths.paths.keys().cloned().collect();
        let source = include_str!("mod.rs");
        let routed: std::collections::BTreeSet<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect();
        assert_eq!(described, routed);
    }

    /// Operation ids are unique (clients name their methods after them).
    #[test]
    fn operation_ids_are_unique() {
        let doc = ApiDoc::openapi();
        let mut seen = std::collections::BTreeSet::new();
        for item in doc.paths.paths.values() {
            for op in [&item.get, &item.put, &item.post, &item.delete]
                .into_iter()
                .flatten()
            {
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(seen.insert(id.clone()), "operationId {id:?} is used twice");
            }
        }
    }
}
