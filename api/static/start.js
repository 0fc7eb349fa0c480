// Starts GraphiQL once React, ReactDOM and GraphiQL have loaded (all served
// by Honeycell itself: api/src/graphiql.rs). A file rather than an inline
// script, so that the page's Content-Security-Policy can allow scripts from
// this server only. Queries go to POST /graphql on the same origin; set
// "Authorization": "Bearer <token>" in GraphiQL's headers editor.
"use strict";

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher: GraphiQL.createFetcher({
      url: new URL("/graphql", window.location.origin).toString(),
    }),
    defaultEditorToolsVisibility: true,
  }),
);
