// The API's interactive description: Swagger UI (served by isochat from the swagger-ui-bundle
// package, no CDN) on the document the code generates. Sign in with "Authorize": a bearer token.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
