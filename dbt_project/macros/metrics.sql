{#- The metrics come from vars.metrics in dbt_project.yml, the one definition both layers share. -#}

{% macro counted_metrics() %}
    {{ return(var('metrics') | rejectattr('aggregation', 'equalto', 'users') | list) }}
{% endmacro %}

{% macro user_metrics() %}
    {{ return(var('metrics') | selectattr('aggregation', 'equalto', 'users') | list) }}
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
    {% for metric in var('metrics') %}
        comment on column {{ this }}.{{ metric.name }} is '{{ metric.description | replace("'", "''") }}';
    {% endfor %}
{% endmacro %}

{% macro batch_days() -%}
    {#- The days a run builds: ds, or ds to ds_end (inclusive) for a range in one build. -#}
    event_date between cast('{{ var("ds") }}' as date) and cast('{{ var("ds_end") or var("ds") }}' as date)
{%- endmacro %}
