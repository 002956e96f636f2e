/* page.c: the challenge page, embedded: HTML, CSS and a script that solves the proof of work
 * (WebCrypto's SHA-256 where the page is a secure context, a small SHA-256 of its own on plain
 * http, where crypto.subtle does not exist), then posts the answer. No external resources. */
#include <stdio.h>
#include <string.h>

#include "shield/page.h"

static const char head[] =
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
    "<meta name=\"robots\" content=\"noindex\">"
    "<title>Checking your browser</title><style>"
    "body{font:17px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}"
    "main{max-width:36em;margin:10vh auto;padding:2em;background:#fff;border-radius:8px;"
    "box-shadow:0 1px 4px #0002}h1{font-size:1.4em;margin-top:0}"
    "progress{width:100%;height:1.2em}#msg:not(:empty){background:#fff3cd;padding:.6em;"
    "border-radius:4px}button{font:inherit;padding:.4em 1.2em}small{color:#5a6270}"
    "</style></head><body><main>\n"
    "<h1>Checking your browser before you reach this site</h1>\n"
    "<p>This site is under a flood of automated traffic and asks every visitor's browser to "
    "do a short calculation first. It usually takes a second or two; then you are taken to "
    "the page you asked for. Nothing is installed and no other site is contacted.</p>\n";

static const char tail[] =
    "<p><label for=\"p\">Progress</label><br><progress id=\"p\" max=\"100\" value=\"0\">"
    "</progress></p>\n<p id=\"st\" role=\"status\" aria-live=\"polite\">Waiting for the "
    "script to start.</p>\n<p><button id=\"go\" type=\"button\" hidden>Start the check"
    "</button></p>\n<noscript><p><strong>JavaScript is turned off.</strong> This check needs "
    "it: please allow JavaScript for this site and reload the page.</p></noscript>\n"
    "<p><small>Protected by moat.</small></p>\n"
    "<form id=\"f\" method=\"post\" hidden></form></main>\n<script>\n"
    "(function(){\n"
    "var d=document.getElementById('d'),c=d.dataset.c,bits=+d.dataset.d,to=d.dataset.to,"
    "st=document.getElementById('st'),pr=document.getElementById('p'),"
    "go=document.getElementById('go');\n"
    "function say(t){st.textContent=t;}\n"
    "function zeros(h){var z=0;for(var i=0;i<h.length;i++){var b=h[i];"
    "if(b===0){z+=8;continue;}while(!(b&128)){z++;b<<=1;}break;}return z;}\n"
    "var K=[],H0=[];(function(){var n=2,k=0;while(k<64){var p=true;for(var f=2;f*f<=n;f++)"
    "if(n%f===0){p=false;break;}if(p){if(k<8)H0[k]=(Math.pow(n,1/2)%1)*4294967296|0;"
    "K[k++]=(Math.cbrt(n)%1)*4294967296|0;}n++;}})();\n"
    "function sha(m){var l=m.length,n=((l+9+63)>>6)<<6,b=new Uint8Array(n);b.set(m);b[l]=128;"
    "var dv=new DataView(b.buffer);dv.setUint32(n-4,l*8);dv.setUint32(n-8,Math.floor(l/"
    "536870912));var h=H0.slice(),w=new Int32Array(64);for(var o=0;o<n;o+=64){"
    "for(var i=0;i<16;i++)w[i]=dv.getInt32(o+i*4);for(i=16;i<64;i++){var x=w[i-15],y=w[i-2];"
    "w[i]=(((x>>>7|x<<25)^(x>>>18|x<<14)^(x>>>3))+w[i-7]+((y>>>17|y<<15)^(y>>>19|y<<13)^"
    "(y>>>10))+w[i-16])|0;}var a=h[0],B=h[1],C=h[2],D=h[3],e=h[4],F=h[5],G=h[6],I=h[7];"
    "for(i=0;i<64;i++){var t1=(I+((e>>>6|e<<26)^(e>>>11|e<<21)^(e>>>25|e<<7))+((e&F)^(~e&G))"
    "+K[i]+w[i])|0,t2=(((a>>>2|a<<30)^(a>>>13|a<<19)^(a>>>22|a<<10))+((a&B)^(a&C)^(B&C)))|0;"
    "I=G;G=F;F=e;e=(D+t1)|0;D=C;C=B;B=a;a=(t1+t2)|0;}h[0]=h[0]+a|0;h[1]=h[1]+B|0;"
    "h[2]=h[2]+C|0;h[3]=h[3]+D|0;h[4]=h[4]+e|0;h[5]=h[5]+F|0;h[6]=h[6]+G|0;h[7]=h[7]+I|0;}"
    "var r=new Uint8Array(32),rv=new DataView(r.buffer);for(i=0;i<8;i++)rv.setInt32(i*4,h[i]);"
    "return r;}\n"
    "var enc=new TextEncoder(),subtle=window.crypto&&crypto.subtle,want=Math.pow(2,bits),"
    "tried=0,t0=0;\n"
    "function found(n){pr.value=100;say('Done. Taking you to the page you asked for.');"
    "var f=document.getElementById('f');f.action='" MOAT_SHIELD_PAGE_ANSWER
    "?c='+c+'&n='+n+'&to='+encodeURIComponent(to);f.submit();}\n"
    "function tick(){var p=Math.min(99,Math.round(100*tried/want/1.5));pr.value=p;"
    "say('Working: '+p+'% ('+tried+' tries).');}\n"
    "function slow(){var end=Date.now()+50;while(Date.now()<end){for(var i=0;i<500;i++,"
    "tried++){if(zeros(sha(enc.encode(c+tried)))>=bits){found(tried);return;}}}tick();"
    "setTimeout(slow,0);}\n"
    "function fast(){var ps=[],base=tried;for(var i=0;i<1024;i++)ps.push(subtle.digest("
    "'SHA-256',enc.encode(c+(base+i))));Promise.all(ps).then(function(hs){for(var i=0;"
    "i<hs.length;i++)if(zeros(new Uint8Array(hs[i]))>=bits){tried=base+i;found(base+i);"
    "return;}tried=base+hs.length;tick();setTimeout(fast,0);},function(){slow();});}\n"
    "function start(){go.hidden=true;document.cookie='moat_ct=1; path=/; SameSite=Lax';"
    "if(document.cookie.indexOf('moat_ct=1')<0){say('Cookies are turned off. This check "
    "gives your browser a cookie to show it was done: please allow cookies for this site "
    "and reload.');return;}t0=Date.now();say('Working.');if(subtle)fast();else slow();}\n"
    "if(d.dataset.auto==='1')start();else{go.hidden=false;"
    "say('The check has not started: read the message above, then start it.');"
    "go.onclick=start;}\n"
    "})();\n</script></body></html>\n";

/* Writes <s> HTML-escaped (for text and quoted attributes). */
static size_t esc(char *out, size_t cap, const char *s)
{
    size_t k = 0;
    for (; *s && k + 7 < cap; s++) {
        const char *r = NULL;
        switch (*s) {
        case '&': r = "&amp;"; break;
        case '<': r = "&lt;"; break;
        case '>': r = "&gt;"; break;
        case '"': r = "&quot;"; break;
        case '\'': r = "&#39;"; break;
        }
        if (r) {
            size_t rl = strlen(r);
            memcpy(out + k, r, rl);
            k += rl;
        } else {
            out[k++] = *s;
        }
    }
    out[k] = 0;
    return k;
}

size_t moat_shield_page(char *out, size_t cap, const char *token, unsigned difficulty,
                        const char *to, const char *message, bool autostart)
{
    char to_e[3 * 1024 + 16], msg_e[1024];
    esc(to_e, sizeof to_e, to);
    esc(msg_e, sizeof msg_e, message ? message : "");
    int n = snprintf(out, cap,
                     "%s<div id=\"msg\" role=\"alert\">%s</div>\n<div id=\"d\" data-c=\"%s\" "
                     "data-d=\"%u\" data-to=\"%s\" data-auto=\"%d\" hidden></div>\n%s",
                     head, msg_e, token, difficulty, to_e, autostart ? 1 : 0, tail);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    return (size_t)n;
}

size_t moat_shield_refused_page(char *out, size_t cap, const char *why, const char *to)
{
    char to_e[3 * 1024 + 16], why_e[1024];
    esc(to_e, sizeof to_e, to);
    esc(why_e, sizeof why_e, why);
    int n = snprintf(out, cap,
                     "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                     "<title>Check refused</title></head><body><main>\n<h1>Your browser's "
                     "answer was refused</h1>\n<p role=\"alert\">%s</p>\n<p><a href=\"%s\">Go "
                     "back and try the check again</a>.</p>\n</main></body></html>\n",
                     why_e, to_e);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    return (size_t)n;
}
