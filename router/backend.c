/* backend.c — see backend.h */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"

struct entry {
    struct entry *next;
    struct aor_backend_state state;
    char name[];
};

static struct entry *table;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static struct aor_backend_state *lookup_or_create(const char *name)
{
    struct entry *e;
    size_t len = strlen(name);

    for (e = table; e != NULL; e = e->next)
        if (strcmp(e->name, name) == 0)
            return &e->state;
    if ((e = malloc(sizeof(*e) + len + 1)) == NULL)
        return NULL;
    aor_balancer_state_init(&e->state);
    memcpy(e->name, name, len + 1);
    e->next = table;
    table = e;
    return &e->state;
}

int aor_backend_attach(struct aor_config *conf)
{
    size_t i;
    int ret = 0;

    pthread_mutex_lock(&table_lock);
    for (i = 0; i != conf->num_backends; ++i) {
        if ((conf->backends[i].state = lookup_or_create(conf->backends[i].name)) == NULL) {
            ret = -1;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return ret;
}

void aor_backend_table_free(void)
{
    pthread_mutex_lock(&table_lock);
    while (table != NULL) {
        struct entry *e = table;
        table = e->next;
        free(e);
    }
    pthread_mutex_unlock(&table_lock);
}
