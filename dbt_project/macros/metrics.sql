{#- The metrics come from vars.metrics in dbt_project.yml, the one definition both layers share. -#}

{% macro defined_metrics() %}
    {#- vars.metrics, refused with one clear line unless it follows the rules that
        stream_worker/metrics.py applies for the speed layer: a metric's name becomes a bare
        column name, its event types and field become SQL, so nothing else may reach a model.
        Models call this while dbt parses them, so a bad definition fails before any SQL runs. -#}
    {%- set metrics = var('metrics') -%}
    {%- set aggregations = ['count', 'sum', 'users'] -%}
    {%- set event_types = ['signup', 'login', 'page_view', 'order'] -%}
    {%- set summable = ['amount_cents'] -%}
    {%- set keys = ['name', 'aggregation', 'description', 'event_types', 'field'] -%}
    {%- set key_columns = ['event_date', 'hour', 'event_hour', 'country', 'source',
                           'kafka_partition', 'next_offset', 'epoch'] -%}
    {#- DuckDB's reserved words (duckdb_keywords() where keyword_category = 'reserved'), as the
        speed layer refuses them: a bare column named `order` would not parse. -#}
    {%- set reserved_words = ['all', 'analyse', 'analyze', 'and', 'any', 'array', 'as', 'asc', 'asymmetric',
                               'both', 'case', 'cast', 'check', 'collate', 'column', 'constraint', 'create',
                               'default', 'deferrable', 'desc', 'describe', 'distinct', 'do', 'else', 'end',
                               'except', 'false', 'fetch', 'for', 'foreign', 'from', 'group', 'having', 'in',
                               'initially', 'intersect', 'into', 'lambda', 'lateral', 'leading', 'limit',
                               'not', 'null', 'offset', 'on', 'only', 'or', 'order', 'pivot', 'pivot_longer',
                               'pivot_wider', 'placing', 'primary', 'qualify', 'references', 'returning',
                               'select', 'show', 'some', 'summarize', 'symmetric', 'table', 'then', 'to',
                               'trailing', 'true', 'union', 'unique', 'unpivot', 'using', 'variadic', 'when',
                               'where', 'window', 'with'] -%}
    {%- if metrics is string or metrics is mapping or metrics is not sequence or metrics | length == 0 -%}
        {{ exceptions.raise_compiler_error("vars.metrics must be a non-empty list") }}
    {%- endif -%}
    {%- set seen = [] -%}
    {%- for metric in metrics -%}
        {%- set where = "vars.metrics: metric " ~ loop.index -%}
        {%- if metric is not mapping -%}
            {{ exceptions.raise_compiler_error(where ~ " is not a mapping") }}
        {%- endif -%}
        {%- set unknown = metric.keys() | reject('in', keys) | list -%}
        {%- if unknown -%}
            {{ exceptions.raise_compiler_error(where ~ " has unknown keys " ~ (unknown | sort)) }}
        {%- endif -%}
        {%- set named = (" (" ~ metric.get('name') ~ ")") if metric.get('name') is string else "" -%}
        {%- for required in ['name', 'aggregation', 'description'] if metric.get(required) is none -%}
            {{ exceptions.raise_compiler_error(where ~ named ~ " has no " ~ required) }}
        {%- endfor -%}
        {%- set name = metric.get('name') -%}
        {%- if name is not string or not modules.re.fullmatch('[a-z][a-z0-9_]{0,62}', name) or name in key_columns -%}
            {{ exceptions.raise_compiler_error(where ~ ": name '" ~ name ~ "' is not a plain SQL identifier "
                ~ "(a lower-case letter, then lower-case letters, digits or _, 63 at most) or is a key column such as country") }}
        {%- endif -%}
        {%- if name in reserved_words -%}
            {{ exceptions.raise_compiler_error(where ~ ": name '" ~ name ~ "' is a reserved word of SQL; choose another") }}
        {%- endif -%}
        {%- if name in seen -%}
            {{ exceptions.raise_compiler_error(where ~ ": " ~ name ~ " is defined twice") }}
        {%- endif -%}
        {%- do seen.append(name) -%}
        {%- set where = where ~ " (" ~ name ~ ")" -%}
        {%- if metric.aggregation not in aggregations -%}
            {{ exceptions.raise_compiler_error(where ~ ": aggregation '" ~ metric.aggregation ~ "' is not one of "
                ~ aggregations | join(', ')) }}
        {%- endif -%}
        {%- set types = metric.get('event_types') or [] -%}
        {%- if types is string or types is mapping or types is not sequence
               or types | reject('in', event_types) | list | length > 0 -%}
            {{ exceptions.raise_compiler_error(where ~ ": event_types " ~ types ~ " must be a list of "
                ~ event_types | join(', ')) }}
        {%- endif -%}
        {%- set field = metric.get('field') -%}
        {%- if metric.aggregation == 'sum' and field is none -%}
            {{ exceptions.raise_compiler_error(where ~ " has no field: a sum needs one of " ~ summable | join(', ')) }}
        {%- elif metric.aggregation != 'sum' and field is not none -%}
            {{ exceptions.raise_compiler_error(where ~ ": only a sum takes a field, not " ~ metric.aggregation) }}
        {%- elif field is not none and field not in summable -%}
            {{ exceptions.raise_compiler_error(where ~ ": field '" ~ field ~ "' is not one of " ~ summable | join(', ')) }}
        {%- endif -%}
        {%- if metric.description is not string or not metric.description.strip() -%}
            {{ exceptions.raise_compiler_error(where ~ " needs a description") }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(metrics) }}
{% endmacro %}

{% macro counted_metrics() %}
    {{ return(defined_metrics() | rejectattr('aggregation', 'equalto', 'users') | list) }}
{% endmacro %}

{% macro user_metrics() %}
    {{ return(defined_metrics() | selectattr('aggregation', 'equalto', 'users') | list) }}
{% endmacro %}

{% macro metric_selects(metric) -%}
    {#- The events a metric looks at, as a predicate. -#}
    {%- if metric.get('event_types') -%}
        event_type in ({% for type in metric.event_types %}'{{ type }}'{{ ", " if not loop.last }}{% endfor %})
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{% macro metric_aggregate(metric) -%}
    {#- A count or sum metric over one group of distinct events. -#}
    {%- if metric.aggregation == 'count' -%}
        count(*) filter (where {{ metric_selects(metric) }})
    {%- elif metric.aggregation == 'sum' -%}
        coalesce(sum({{ metric.field }}) filter (where {{ metric_selects(metric) }}), 0)
    {%- else -%}
        {{ exceptions.raise_compiler_error("metric " ~ metric.name ~ ": aggregation " ~ metric.aggregation ~ " is not count or sum") }}
    {%- endif -%}
{%- endmacro %}

{% macro comment_metric_columns() %}
    {#- The definition's descriptions as column comments: the docs site shows them for every metric. -#}
    {% for metric in defined_metrics() %}
        comment on column {{ this }}.{{ metric.name }} is '{{ metric.description | replace("'", "''") }}';
    {% endfor %}
{% endmacro %}

{% macro batch_days() -%}
    {#- The days a run builds: ds, or ds to ds_end (inclusive) for a range in one build. -#}
    event_date between cast('{{ day_var("ds") }}' as date) and cast('{{ day_var("ds_end") if var("ds_end") else day_var("ds") }}' as date)
{%- endmacro %}

{% macro user_metrics_relation() -%}
    {#- The users metrics of the definition as rows (name, event_types; null: every type). -#}
    select * from (values
        {%- for metric in user_metrics() %}
        ('{{ metric.name }}', {{ ("['" ~ metric.event_types | join("', '") ~ "']") if metric.get('event_types') else "null" }}::varchar[]){{ "," if not loop.last }}
        {%- else %}
        (null::varchar, null::varchar[])
        {%- endfor %}
    ) as user_metrics (name, event_types)
    {%- if not user_metrics() %}
    where false
    {%- endif %}
{%- endmacro %}
