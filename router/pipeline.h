/*
 * pipeline — the path of one request, stage by stage:
 *   route → authenticate → admit → select backend → proxy/stream → account → log
 * This is the first file to read. Each stage lives in its own module and talks to the
 * others only through struct aor_request (request.h).
 */
#ifndef AOR_PIPELINE_H
#define AOR_PIPELINE_H

#include <h2o.h>

/* h2o's on_req for every path; always answers (returns 0) */
int aor_pipeline_on_req(h2o_handler_t *self, h2o_req_t *req);

#endif
