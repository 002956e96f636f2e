/* reason.c: reason phrases for the HTTP status codes moat sends or forwards. */
#include "http/h1.h"

struct moat_str moat_http_reason(int status)
{
    /* A switch compiles to a jump table or a binary search; either beats a table walk and
     * keeps each code next to its text (RFC 9110 section 15, plus the common extensions). */
    switch (status) {
    case 100:
        return MOAT_STR("Continue");
    case 101:
        return MOAT_STR("Switching Protocols");
    case 102:
        return MOAT_STR("Processing");
    case 103:
        return MOAT_STR("Early Hints");
    case 200:
        return MOAT_STR("OK");
    case 201:
        return MOAT_STR("Created");
    case 202:
        return MOAT_STR("Accepted");
    case 203:
        return MOAT_STR("Non-Authoritative Information");
    case 204:
        return MOAT_STR("No Content");
    case 205:
        return MOAT_STR("Reset Content");
    case 206:
        return MOAT_STR("Partial Content");
    case 207:
        return MOAT_STR("Multi-Status");
    case 208:
        return MOAT_STR("Already Reported");
    case 226:
        return MOAT_STR("IM Used");
    case 300:
        return MOAT_STR("Multiple Choices");
    case 301:
        return MOAT_STR("Moved Permanently");
    case 302:
        return MOAT_STR("Found");
    case 303:
        return MOAT_STR("See Other");
    case 304:
        return MOAT_STR("Not Modified");
    case 305:
        return MOAT_STR("Use Proxy");
    case 307:
        return MOAT_STR("Temporary Redirect");
    case 308:
        return MOAT_STR("Permanent Redirect");
    case 400:
        return MOAT_STR("Bad Request");
    case 401:
        return MOAT_STR("Unauthorized");
    case 402:
        return MOAT_STR("Payment Required");
    case 403:
        return MOAT_STR("Forbidden");
    case 404:
        return MOAT_STR("Not Found");
    case 405:
        return MOAT_STR("Method Not Allowed");
    case 406:
        return MOAT_STR("Not Acceptable");
    case 407:
        return MOAT_STR("Proxy Authentication Required");
    case 408:
        return MOAT_STR("Request Timeout");
    case 409:
        return MOAT_STR("Conflict");
    case 410:
        return MOAT_STR("Gone");
    case 411:
        return MOAT_STR("Length Required");
    case 412:
        return MOAT_STR("Precondition Failed");
    case 413:
        return MOAT_STR("Content Too Large");
    case 414:
        return MOAT_STR("URI Too Long");
    case 415:
        return MOAT_STR("Unsupported Media Type");
    case 416:
        return MOAT_STR("Range Not Satisfiable");
    case 417:
        return MOAT_STR("Expectation Failed");
    case 418:
        return MOAT_STR("I'm a teapot");
    case 421:
        return MOAT_STR("Misdirected Request");
    case 422:
        return MOAT_STR("Unprocessable Content");
    case 423:
        return MOAT_STR("Locked");
    case 424:
        return MOAT_STR("Failed Dependency");
    case 425:
        return MOAT_STR("Too Early");
    case 426:
        return MOAT_STR("Upgrade Required");
    case 428:
        return MOAT_STR("Precondition Required");
    case 429:
        return MOAT_STR("Too Many Requests");
    case 431:
        return MOAT_STR("Request Header Fields Too Large");
    case 451:
        return MOAT_STR("Unavailable For Legal Reasons");
    case 500:
        return MOAT_STR("Internal Server Error");
    case 501:
        return MOAT_STR("Not Implemented");
    case 502:
        return MOAT_STR("Bad Gateway");
    case 503:
        return MOAT_STR("Service Unavailable");
    case 504:
        return MOAT_STR("Gateway Timeout");
    case 505:
        return MOAT_STR("HTTP Version Not Supported");
    case 506:
        return MOAT_STR("Variant Also Negotiates");
    case 507:
        return MOAT_STR("Insufficient Storage");
    case 508:
        return MOAT_STR("Loop Detected");
    case 511:
        return MOAT_STR("Network Authentication Required");
    default:
        return MOAT_STR("Unknown");
    }
}
