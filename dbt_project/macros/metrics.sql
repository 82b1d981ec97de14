{#- The metrics come from vars.metrics in dbt_project.yml, the one definition both layers share. -#}

{% macro defined_metrics() %}
    {#- vars.metrics. lambdaflow checks the definition before it runs dbt (lambdaflow/core/metrics.py,
        the one place its rules live): a metric's name becomes a bare column name, its event types
        and field become SQL, so only a definition that follows them reaches a model. -#}
    {{ return(var('metrics')) }}
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
