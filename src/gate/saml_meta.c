/*
 * provgate core: per-process SAML IdP state (the SP and Single Logout
 * context in use), with IdP metadata fetched from idp_metadata_url without
 * blocking and refreshed every metadata_refresh_s.
 *
 * The SP and SLO objects in use form one reference-counted pg_saml_bind_t.
 * Every flow that uses them takes a reference (pg_saml_bind_get) and drops
 * it when done (pg_saml_bind_put); a verification job on a host thread
 * holds its reference until its done-handler runs back on the loop. A
 * refresh builds a new bind and swaps it in: the old one is freed only
 * when its last user lets go, so no job ever sees its SP freed under it.
 * All reference counting runs on the event loop thread (jobs take and drop
 * theirs there too), so plain counters suffice.
 *
 * Fetch policy: the first fetch starts as soon as the worker runs; after a
 * failure the next try comes after 1 s, doubling up to metadata_refresh_s;
 * after a success, metadata_refresh_s later. A refused or failed refresh
 * keeps the last good metadata (logged at WARN); an unchanged document
 * (same SHA-256) is checked but not rebuilt. The entityID is pinned
 * to the first good metadata of this process (or the bootstrap file's):
 * a document for another entity is refused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provgate/saml.h"
#include "provgate/saml_slo.h"
#include "gate_int.h"

#define PG_SAML_META_RETRY_MIN_S 1u

/* Drop one reference; the last one frees the bind (and the SP and SLO
 * context when it owns them). NULL is fine. Loop thread only. */
void
pg_saml_bind_put(pg_saml_bind_t *b)
{
    if (b == NULL || --b->refs > 0) {
        return;
    }
    if (b->owned) {
        pg_saml_slo_free(b->slo);
        pg_saml_sp_free(b->sp);
    }
    free(b);
}

/* A new bind with one reference (the caller's); owned: sp and slo are
 * freed with it. NULL on OOM (sp and slo are then left to the caller). */
static pg_saml_bind_t *
pg_saml_bind_new(pg_saml_sp_t *sp, pg_saml_slo_t *slo, int owned)
{
    pg_saml_bind_t *b = calloc(1, sizeof(*b));

    if (b == NULL) {
        return NULL;
    }
    b->refs = 1;
    b->owned = owned;
    b->sp = sp;
    b->slo = slo;
    return b;
}

static pg_saml_prov_t *
pg_saml_prov_find(pg_gate_t *g, const char *idp)
{
    size_t i;

    for (i = 0; idp != NULL && i < g->nsaml; i++) {
        if (strcmp(g->saml[i].d->name, idp) == 0) {
            return &g->saml[i];
        }
    }
    return NULL;
}

/* See gate_int.h. */
pg_saml_bind_t *
pg_saml_bind_get(pg_gate_t *g, const char *idp)
{
    pg_saml_prov_t *p = pg_saml_prov_find(g, idp);

    if (p == NULL || p->cur == NULL) {
        return NULL;
    }
    p->cur->refs++;
    return p->cur;
}

/*
 * Check a fetched document and make it the one in use: SP (and SLO
 * context when slo_url is set) from the same bytes, entityID pinned. md is
 * NUL-terminated (the HTTP client's copy). *changed is 0 when md is the
 * document already in use (checked, not rebuilt). On failure nothing
 * changes.
 */
static pg_status_t
pg_saml_meta_apply(pg_saml_prov_t *p, const char *md, size_t len,
                   int *changed, pg_err_t *err)
{
    const pg_saml_idp_cfg_t *c = &p->d->saml;
    pg_saml_sp_t *sp = NULL;
    pg_saml_slo_t *slo = NULL;
    pg_saml_sp_cfg_t sc;
    pg_saml_bind_t *b, *old;
    char *eid = NULL;
    char dig[64];
    pg_status_t st;

    st = pg_saml_idp_metadata_check(md, len, p->entity_id, &eid, err);
    if (st != PG_OK) {
        return st;
    }
    *changed = 0;
    if (pg_sha256_b64url(md, len, dig, sizeof(dig)) != PG_OK) {
        dig[0] = '\0';
    } else if (p->cur != NULL && strcmp(dig, p->digest) == 0) {
        /* the same document as the one in use: nothing to rebuild */
        free(eid);
        return PG_OK;
    }
    st = pg_saml_sp_rebind(c->sp, md, len, &sp, err);
    if (st == PG_OK && c->slo_url != NULL) {
        memset(&sc, 0, sizeof(sc));
        sc.entity_id = c->sp_entity_id;
        sc.acs_url = c->acs_url;
        sc.slo_url = c->slo_url;
        sc.idp_metadata = md;
        sc.idp_metadata_len = len;
        sc.clock_skew_s = c->clock_skew_s;
        st = pg_saml_slo_new(sp, &sc, &slo, err);
    }
    b = st == PG_OK ? pg_saml_bind_new(sp, slo, 1) : NULL;
    if (b == NULL) {
        pg_saml_slo_free(slo);
        pg_saml_sp_free(sp);
        free(eid);
        return st != PG_OK ? st : PG_ERR_NOMEM;
    }
    old = p->cur;
    p->cur = b;
    pg_saml_bind_put(old);
    snprintf(p->digest, sizeof(p->digest), "%s", dig);
    p->swaps++;
    *changed = 1;
    if (p->entity_id == NULL) {
        p->entity_id = eid;
    } else {
        free(eid);
    }
    return PG_OK;
}

/* Arm the next fetch: metadata_refresh_s after a success, else the
 * doubling back-off (1 s, 2 s, ... capped at metadata_refresh_s). */
static void
pg_saml_meta_schedule(pg_saml_prov_t *p, int ok)
{
    const pg_host_t *h = p->gate->host;
    unsigned refresh = p->d->saml.metadata_refresh_s;
    unsigned s;

    if (ok) {
        p->backoff_s = 0;
        s = refresh;
    } else {
        s = p->backoff_s == 0 ? PG_SAML_META_RETRY_MIN_S
                              : (p->backoff_s > refresh / 2
                                     ? refresh : p->backoff_s * 2);
        if (s > refresh) {
            s = refresh;
        }
        p->backoff_s = s;
    }
    h->timer_arm(p->timer, (uint64_t) s * 1000);
}

static void
pg_saml_meta_fetched(void *arg, pg_status_t st, const pg_http_response_t *resp)
{
    pg_saml_prov_t *p = arg;
    const pg_host_t *h = p->gate->host;
    const char *name = p->d->name;
    const char *keep = p->cur != NULL ? "keeping the last good metadata"
                                      : "no metadata yet: sign-in answers "
                                        "503";
    pg_err_t err = { "" };

    p->hop = NULL;
    if (st == PG_ERR_CANCELLED) {
        return;
    }
    if (st == PG_OK && resp->status != 200) {
        pg_log(h, PG_LOG_WARN, "saml idp %s: metadata URL answered HTTP %ld "
               "(%s)", name, resp->status, keep);
        st = PG_ERR_HTTP;
    } else if (st != PG_OK) {
        pg_log(h, PG_LOG_WARN, "saml idp %s: metadata fetch failed: %s%s "
               "(%s)", name, pg_status_str(st),
               st == PG_ERR_TOO_LARGE ? " (document over the size cap)" : "",
               keep);
    } else {
        int changed = 0;

        st = pg_saml_meta_apply(p, resp->body, resp->body_len, &changed,
                                &err);
        if (st != PG_OK) {
            pg_log(h, PG_LOG_WARN, "saml idp %s: metadata refused: %s (%s)",
                   name, err.msg, keep);
        } else if (!changed) {
            pg_log(h, PG_LOG_DEBUG, "saml idp %s: metadata unchanged", name);
        } else {
            pg_log(h, PG_LOG_INFO, "saml idp %s: metadata loaded from %s "
                   "(entityID %s, version %u)", name,
                   p->d->saml.idp_metadata_url, p->entity_id, p->swaps);
        }
    }
    pg_saml_meta_schedule(p, st == PG_OK);
}

/* Timer: start one fetch of the metadata URL (capped, never blocking). */
static void
pg_saml_meta_tick(void *arg)
{
    pg_saml_prov_t *p = arg;
    const pg_saml_idp_cfg_t *c = &p->d->saml;
    pg_http_request_t req;
    static const char *const accept[] = {
        "Accept: application/samlmetadata+xml, application/xml, text/xml"
    };
    pg_status_t st;

    if (p->hop != NULL) {
        return;
    }
    if (p->gate->host->exiting != NULL
        && p->gate->host->exiting(p->gate->host->ctx)) {
        return;     /* a quitting worker fetches nothing more */
    }
    memset(&req, 0, sizeof(req));
    req.method = "GET";
    req.url = c->idp_metadata_url;
    req.headers = accept;
    req.nheaders = 1;
    req.timeout_ms = c->http_timeout_ms;
    req.connect_timeout_ms = c->http_timeout_ms;
    req.max_response = PG_SAML_MAX_METADATA;
    req.tls = c->tls;
    st = pg_http_start(p->gate->http, &req, pg_saml_meta_fetched, p, &p->hop);
    if (st != PG_OK) {
        p->hop = NULL;
        pg_log(p->gate->host, PG_LOG_WARN, "saml idp %s: metadata fetch "
               "cannot start: %s", p->d->name, pg_status_str(st));
        pg_saml_meta_schedule(p, 0);
    }
}

/* See gate_int.h. */
pg_status_t
pg_saml_meta_init(pg_gate_t *g, pg_err_t *err)
{
    const pg_config_t *cfg = g->cfg;
    const pg_host_t *h = g->host;
    size_t i;

    g->saml = calloc(cfg->nidps ? cfg->nidps : 1, sizeof(*g->saml));
    if (g->saml == NULL) {
        pg_err_set(err, "saml idps: out of memory");
        return PG_ERR_NOMEM;
    }
    for (i = 0; i < cfg->nidps; i++) {
        const pg_idp_cfg_t *d = &cfg->idps[i];
        pg_saml_prov_t *p = &g->saml[g->nsaml];

        if (d->type != PG_IDP_SAML) {
            continue;
        }
        g->nsaml++;
        p->gate = g;
        p->d = d;
        if (pg_saml_sp_has_idp(d->saml.sp)) {
            /* the file's metadata (checked at load): borrowed from cfg */
            p->cur = pg_saml_bind_new(d->saml.sp, d->saml.slo, 0);
            p->entity_id = strdup(pg_saml_sp_idp_entity_id(d->saml.sp));
            if (p->cur == NULL || p->entity_id == NULL) {
                pg_err_set(err, "saml idp %s: out of memory", d->name);
                return PG_ERR_NOMEM;
            }
        }
        if (d->saml.idp_metadata_url == NULL ||
            (g->flags & PG_GATE_NO_LOGIN) != 0) {
            continue;           /* nothing to fetch, or no sign-in here */
        }
        p->timer = h->timer_open(h->ctx, pg_saml_meta_tick, p);
        if (p->timer == NULL) {
            pg_err_set(err, "saml idp %s: no timer", d->name);
            return PG_ERR_NOMEM;
        }
        /* first fetch from the loop, as soon as it runs */
        h->timer_arm(p->timer, 0);
    }
    return PG_OK;
}

/* See gate_int.h. */
void
pg_saml_meta_free(pg_gate_t *g)
{
    size_t i;

    for (i = 0; g->saml != NULL && i < g->nsaml; i++) {
        pg_saml_prov_t *p = &g->saml[i];

        if (p->hop != NULL) {
            pg_http_cancel(p->hop);
            p->hop = NULL;
        }
        if (p->timer != NULL) {
            g->host->timer_close(p->timer);
            p->timer = NULL;
        }
        pg_saml_bind_put(p->cur);
        p->cur = NULL;
        free(p->entity_id);
        p->entity_id = NULL;
    }
    free(g->saml);
    g->saml = NULL;
    g->nsaml = 0;
}
