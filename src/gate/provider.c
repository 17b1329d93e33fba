/*
 * provgate core: per-process OIDC provider state (discovery metadata and
 * JWKS), fetched without blocking and shared by every request.
 *
 * While a fetch runs, ops that need it are parked on the provider's waiter
 * list; when it ends each parked op's step runs with the fetch status. A
 * JWKS refresh for an unknown "kid" is rate-limited per provider
 * (jwks_refresh_min_s), so a flood of tokens with random kids cannot make
 * us hammer the provider.
 */
#include <stdlib.h>
#include <string.h>

#include "gate_int.h"

static void pg_provider_fetch(pg_provider_t *p);

pg_provider_t *
pg_provider_find(pg_gate_t *g, const char *idp)
{
    size_t i;

    for (i = 0; idp != NULL && i < g->nproviders; i++) {
        if (strcmp(g->providers[i].cfg->name, idp) == 0) {
            return &g->providers[i];
        }
    }
    return NULL;
}

void
pg_provider_clear(pg_provider_t *p)
{
    if (p->hop != NULL) {
        pg_http_cancel(p->hop);
        p->hop = NULL;
    }
    pg_oidc_meta_clear(&p->meta);
    pg_jwks_free(p->jwks);
    p->jwks = NULL;
    p->have_meta = 0;
}

static int
pg_list_remove(pg_op_t **head, pg_op_t *op)
{
    pg_op_t **pp;

    for (pp = head; *pp != NULL; pp = &(*pp)->wnext) {
        if (*pp == op) {
            *pp = op->wnext;
            return 1;
        }
    }
    return 0;
}

/* Remove op from its provider's waiter or waking list (no step is run). */
void
pg_provider_unpark(pg_op_t *op)
{
    pg_provider_t *p = op->waiting_on;

    if (p == NULL) {
        return;
    }
    if (!pg_list_remove(&p->waiters, op)) {
        (void) pg_list_remove(&p->waking, op);
    }
    op->wnext = NULL;
    op->waiting_on = NULL;
}

/*
 * Run every parked op's step with st. The ops being woken stay reachable
 * in p->waking until their turn, so a step that ends up cancelling another
 * parked op (HTTP/2: closing a connection finalizes its sibling streams)
 * removes it from there instead of leaving us a dangling pointer. Steps may
 * park again: they go to p->waiters, for the next fetch.
 */
static void
pg_provider_wake(pg_provider_t *p, pg_status_t st)
{
    pg_op_t *op;

    p->waking = p->waiters;
    p->waiters = NULL;
    while ((op = p->waking) != NULL) {
        pg_step_fn next;

        p->waking = op->wnext;
        op->wnext = NULL;
        op->waiting_on = NULL;
        next = op->next;
        op->next = NULL;
        next(op, st);
    }
}

static void
pg_provider_fetched(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    pg_provider_t *p = arg;
    pg_gate_t *g = p->gate;
    const pg_host_t *h = g->host;
    pg_err_t err = { "" };
    int what = p->fetching;

    p->hop = NULL;
    p->fetching = 0;

    if (st == PG_OK && resp->status != 200) {
        pg_log(h, PG_LOG_ERROR, "idp %s: %s answered HTTP %ld", p->cfg->name,
               what == 1 ? "discovery" : "jwks", resp->status);
        st = PG_ERR_HTTP;
    }
    if (st == PG_OK && what == 1) {
        pg_oidc_meta_t m;

        memset(&m, 0, sizeof(m));
        st = pg_oidc_meta_parse(resp->body, resp->body_len, p->cfg, &m, &err);
        if (st == PG_OK) {
            pg_oidc_meta_clear(&p->meta);
            p->meta = m;
            p->have_meta = 1;
            p->meta_expires = h->now_ms(h->ctx)
                              + (uint64_t) p->cfg->metadata_ttl_s * 1000;
        } else {
            pg_log(h, PG_LOG_ERROR, "idp %s: bad discovery document: %s",
                   p->cfg->name, err.msg);
        }
    } else if (st == PG_OK && what == 2) {
        pg_jwks_t *j = NULL;

        st = pg_jwks_parse(resp->body, resp->body_len, &j, &err);
        if (st == PG_OK) {
            pg_jwks_free(p->jwks);
            p->jwks = j;
        } else {
            pg_log(h, PG_LOG_ERROR, "idp %s: bad JWKS: %s", p->cfg->name,
                   err.msg);
        }
    } else if (st != PG_OK) {
        pg_log(h, PG_LOG_ERROR, "idp %s: %s fetch failed: %s", p->cfg->name,
               what == 1 ? "discovery" : "jwks", pg_status_str(st));
    }

    pg_provider_wake(p, st);
}

/* Start fetching metadata (if stale) or else the JWKS. */
static void
pg_provider_fetch(pg_provider_t *p)
{
    pg_gate_t *g = p->gate;
    const pg_host_t *h = g->host;
    pg_http_request_t req;
    static const char *const accept[] = { "Accept: application/json" };
    uint64_t now = h->now_ms(h->ctx);
    pg_status_t st;

    memset(&req, 0, sizeof(req));
    req.method = "GET";
    req.headers = accept;
    req.nheaders = 1;
    req.timeout_ms = p->cfg->http_timeout_ms;
    req.connect_timeout_ms = p->cfg->http_timeout_ms;
    req.tls = p->cfg->tls;

    if (!p->have_meta || now >= p->meta_expires) {
        p->fetching = 1;
        req.url = p->cfg->discovery_url;
        req.max_response = PG_OIDC_MAX_DISCOVERY;
    } else {
        p->fetching = 2;
        p->jwks_fetched = now;
        req.url = p->meta.jwks_uri;
        req.max_response = PG_OIDC_MAX_JWKS;
    }
    st = pg_http_start(g->http, &req, pg_provider_fetched, p, &p->hop);
    if (st != PG_OK) {
        p->fetching = 0;
        p->hop = NULL;
        pg_provider_wake(p, st);
    }
}

/*
 * Make sure metadata (and the JWKS when need_jwks; a fresh JWKS when
 * force_jwks and the rate limit allows) are loaded. Returns PG_OK with
 * *parked = 0 when ready now. Otherwise parks op (*parked = 1) and runs
 * next(op, st) when the fetch ends; next must call pg_provider_ready()
 * again (metadata and JWKS are fetched one after the other).
 * PG_ERR_BUSY: force_jwks was refused by the rate limit.
 */
pg_status_t
pg_provider_ready(pg_op_t *op, int need_jwks, int force_jwks,
                  pg_step_fn next, int *parked)
{
    pg_provider_t *p = op->prov;
    const pg_host_t *h = op->g->host;
    uint64_t now = h->now_ms(h->ctx);
    int need = 0;

    *parked = 0;
    if (!p->have_meta || now >= p->meta_expires) {
        need = 1;
    } else if (need_jwks && p->jwks == NULL) {
        need = 1;
    } else if (force_jwks) {
        if (now - p->jwks_fetched
            < (uint64_t) p->cfg->jwks_refresh_min_s * 1000) {
            return PG_ERR_BUSY;
        }
        need = 1;
    }
    if (!need) {
        return PG_OK;
    }

    op->next = next;
    op->waiting_on = p;
    op->wnext = p->waiters;
    p->waiters = op;
    *parked = 1;

    if (p->fetching == 0) {
        /* metadata first when stale, else the JWKS */
        pg_provider_fetch(p);
    }
    return PG_OK;
}
